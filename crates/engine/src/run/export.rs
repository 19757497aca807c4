//! Exports of a run's trained parameters and checkpoints: the adapter in its method's reference
//! format (PEFT, the adapters library, or trained tensors), a llama.cpp GGUF LoRA, the merged
//! model as a Hugging Face folder or one GGUF file, and a base model converted to GGUF.

use std::path::Path;

use candle_core::DType;

use crate::device::default_device;
use crate::error::{EngineError, Result};
use crate::export::card::Exported;
use crate::export::{write_peft_dir, ExportInfo};
use crate::fsutil::write_atomic;
use crate::gguf::model::GgufType;
use crate::model::t5::{is_t5, T5Model};
use crate::model::{load_model, LlamaModel};
use crate::peft::MethodKind;
use crate::run_folder::{load_run, RunConfig};
use crate::train::checkpoint;

/// Writes trained parameters in the run's export format (PEFT for LoRA, IA³, prompt and prefix
/// tuning; the adapters library's for Houlsby and Pfeiffer; the trained
/// tensors as safetensors under their transformers names for freeze and full runs).
pub fn export_params(
    cfg: &RunConfig,
    params: &[(String, candle_core::Tensor)],
    step: Option<usize>,
    out: &Path,
) -> Result<()> {
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    let base = base.display().to_string();
    match cfg.method.kind {
        MethodKind::Lora
        | MethodKind::Ia3
        | MethodKind::PromptTuning
        | MethodKind::PrefixTuning => {
            let (method, task_type, multimodal_layers) = match is_t5(&cfg.model) {
                true => (cfg.method.with_t5_defaults()?, "SEQ_2_SEQ_LM", None),
                false => {
                    let model = crate::model::LlamaConfig::from_path(&cfg.model)?;
                    (cfg.method.clone(), "CAUSAL_LM", model.multimodal_layers())
                }
            };
            let info = ExportInfo {
                base_model: base.clone(),
                task_type,
                multimodal_layers,
            };
            write_peft_dir(out, &method, &info, params)?
        }
        MethodKind::Houlsby | MethodKind::Pfeiffer => {
            crate::export::adapters_lib::write_adapters_dir(
                out,
                &cfg.method,
                &crate::model::LlamaConfig::from_path(&cfg.model)?,
                &base,
                params,
            )?
        }
        MethodKind::Freeze | MethodKind::Full => write_atomic(
            &out.join("trained.safetensors"),
            &crate::fsutil::safetensors_bytes(params, None)?,
        )?,
    }
    crate::export::card::write_model_card(cfg, &base, Exported::Adapter, step, out)
}

/// The run config and the contents of a checkpoint folder (`<run>/checkpoints/step-N`).
fn run_and_checkpoint(checkpoint_dir: &Path) -> Result<(RunConfig, checkpoint::Checkpoint)> {
    let run_dir = checkpoint_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| {
            EngineError::bad_file(
                checkpoint_dir,
                "is not inside a run folder (<run>/checkpoints/step-N)",
            )
        })?;
    Ok((load_run(run_dir)?, checkpoint::load(checkpoint_dir)?))
}

/// A checkpoint's run config, its trained parameters sorted by name, and its step.
type RunParams = (RunConfig, Vec<(String, candle_core::Tensor)>, usize);

fn run_and_params(checkpoint_dir: &Path) -> Result<RunParams> {
    let (cfg, ck) = run_and_checkpoint(checkpoint_dir)?;
    let mut params: Vec<(String, candle_core::Tensor)> = ck.params.into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((cfg, params, ck.state.step))
}

/// Exports a checkpoint's LoRA as a llama.cpp GGUF adapter file `out`.
pub fn export_gguf_lora(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    let (cfg, params, _) = run_and_params(checkpoint_dir)?;
    decoder_only(&cfg, "a GGUF LoRA")?;
    let model = crate::model::LlamaConfig::from_path(&cfg.model)?;
    crate::gguf::lora::write_gguf_lora(&model, &cfg.method, &params, out)
}

/// Refuses by name an export that exists for decoder-only models only.
fn decoder_only(cfg: &RunConfig, what: &str) -> Result<()> {
    match is_t5(&cfg.model) {
        true => Err(EngineError::config(
            "format",
            format!("{what} cannot be made from a T5 run yet; export the adapter (peft)"),
        )),
        false => Ok(()),
    }
}

/// Exports a checkpoint folder (`<run>/checkpoints/step-N`) to `out`.
pub fn export_checkpoint(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    let (cfg, params, step) = run_and_params(checkpoint_dir)?;
    export_params(&cfg, &params, Some(step), out)
}

/// Sets each of `vars` to its trained value in the checkpoint `ck` (from `checkpoint_dir`).
fn set_trained(
    vars: &crate::peft::Trainables,
    ck: &checkpoint::Checkpoint,
    checkpoint_dir: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let trained = ck.params.get(name).ok_or_else(|| {
            EngineError::bad_file(
                checkpoint_dir,
                format!("lacks `{name}`; it belongs to another run"),
            )
        })?;
        var.set(&trained.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// The run's base model with a checkpoint's trained parameters set (LoRA, DoRA and IA³
/// adapters still attached; freeze and full runs' trained weights in place), the run, and the
/// checkpoint's step.
fn trained_model(checkpoint_dir: &Path) -> Result<(RunConfig, LlamaModel, usize)> {
    let (cfg, ck) = run_and_checkpoint(checkpoint_dir)?;
    decoder_only(&cfg, "a merged GGUF model")?;
    let mut model = load_model(&cfg.model, DType::F32, &default_device())?;
    let vars = cfg.method.apply(&mut model, cfg.train.seed)?;
    set_trained(&vars, &ck, checkpoint_dir)?;
    Ok((cfg, model, ck.state.step))
}

/// Writes the run's base model with a checkpoint's trained parameters merged in, as a Hugging
/// Face folder at `out` (LoRA, DoRA and IA³ adapters folded into the weights; freeze and full
/// runs' trained weights in place); a T5 run's too.
pub fn export_merged(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    use crate::export::merged::{write_merged_model, write_merged_t5, MAX_SHARD_BYTES};
    let (cfg, ck) = run_and_checkpoint(checkpoint_dir)?;
    let device = default_device();
    if is_t5(&cfg.model) {
        let mut model = T5Model::load(&cfg.model, DType::F32, &device)?;
        let vars = cfg.method.apply_t5(&mut model, cfg.train.seed, None)?;
        set_trained(&vars, &ck, checkpoint_dir)?;
        write_merged_t5(&model, &cfg.model, out, MAX_SHARD_BYTES)?;
    } else {
        let mut model = load_model(&cfg.model, DType::F32, &device)?;
        let vars = cfg.method.apply(&mut model, cfg.train.seed)?;
        set_trained(&vars, &ck, checkpoint_dir)?;
        write_merged_model(&model, &cfg.model, out, MAX_SHARD_BYTES)?;
    }
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    let base = base.display().to_string();
    let step = ck.state.step;
    crate::export::card::write_model_card(&cfg, &base, Exported::MergedModel, Some(step), out)
}

/// Writes the run's base model with a checkpoint merged in as one GGUF file `out`.
pub fn export_merged_gguf(checkpoint_dir: &Path, ty: GgufType, out: &Path) -> Result<()> {
    let (cfg, mut model, _) = trained_model(checkpoint_dir)?;
    crate::peft::merge::merge_adapters(&mut model)?;
    let name = run_model_name(&cfg);
    crate::gguf::model::write_gguf_model(&mut model, &cfg.model, &name, ty, out)
}

/// Converts the model folder `model_dir` to one GGUF file `out`.
pub fn convert_to_gguf(model_dir: &Path, ty: GgufType, out: &Path) -> Result<()> {
    let mut model = load_model(model_dir, DType::F32, &default_device())?;
    let name = folder_name(model_dir);
    crate::gguf::model::write_gguf_model(&mut model, model_dir, &name, ty, out)
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

/// `<base model> + <run folder>`, the name a merged model is given.
fn run_model_name(cfg: &RunConfig) -> String {
    format!("{} + {}", folder_name(&cfg.model), folder_name(&cfg.out))
}
