//! Shared helpers: tiny models and datasets on disk.

use std::path::{Path, PathBuf};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};
use peft_studio_engine::run::RunConfig;
use peft_studio_engine::train::TrainConfig;

pub fn tiny_model(dir: &Path, spec: &TinySpec) -> PathBuf {
    let p = dir.join("model");
    write_tiny_model(&p, spec).expect("write tiny model");
    p
}

/// The tiny model's folder with its weights stored in `dtype` (a hub checkpoint's bf16).
pub fn stored_as(dir: &Path, spec: &TinySpec, dtype: candle_core::DType) -> PathBuf {
    let f32_dir = tiny_model(dir, spec);
    let out = dir.join(format!("{dtype:?}"));
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&f32_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if name != "model.safetensors" {
            std::fs::copy(&path, out.join(name)).unwrap();
        }
    }
    let tensors = candle_core::safetensors::load(
        f32_dir.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(name, t)| (name, t.to_dtype(dtype).unwrap()))
    .collect::<std::collections::HashMap<_, _>>();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    out
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A dataset small enough to memorise.
pub fn memorisable_dataset(dir: &Path) -> PathBuf {
    let lines = [
        r#"{"text": "the cat sat on the mat"}"#,
        r#"{"prompt": "2+2=", "completion": "4, said the owl"}"#,
        r#"{"text": "the cat sat on the mat"}"#,
        r#"{"prompt": "2+2=", "completion": "4, said the owl"}"#,
    ];
    write(dir, "data.jsonl", &lines.join("\n"))
}

pub fn lora_method(r: usize, targets: &str) -> MethodConfig {
    MethodConfig {
        kind: MethodKind::Lora,
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: Some(TargetModules::parse_cli(targets)),
        ..Default::default()
    }
}

pub fn run_config(
    dir: &Path,
    model: PathBuf,
    dataset: PathBuf,
    method: MethodConfig,
    train: TrainConfig,
) -> RunConfig {
    RunConfig {
        model,
        dataset,
        out: dir.join("run"),
        method,
        train,
        data: Default::default(),
        eval: Default::default(),
        target: Default::default(),
    }
}

/// The largest absolute difference between two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("s")
}

/// The tiny model the gradient tests share (q/k/v bias, tied embeddings) in `dtype`, with
/// `method` applied (seed 3). B starts at zero, which would make every A gradient zero: B gets
/// random values. (A DoRA layer then no longer has m = ‖W + s·BA‖, so its magnitude gradient
/// is not trivial.)
pub fn gradient_model(
    dir: &Path,
    method: &MethodConfig,
    dtype: candle_core::DType,
) -> (
    peft_studio_engine::model::LlamaModel,
    peft_studio_engine::peft::Trainables,
) {
    let spec = TinySpec {
        qkv_bias: true,
        tie_word_embeddings: true,
        ..Default::default()
    };
    gradient_model_of(dir, method, dtype, &spec)
}

/// The tiny model of each family besides Llama/Qwen2 that the gradient tests check too
/// (tied embeddings; their parts made to matter: `TinySpec::architecture`).
pub fn family_specs() -> Vec<TinySpec> {
    [
        "Gemma3ForCausalLM",
        "Gemma2ForCausalLM",
        "Qwen3ForCausalLM",
        "MistralForCausalLM",
        "Phi3ForCausalLM",
    ]
    .into_iter()
    .map(|architecture| TinySpec {
        architecture,
        tie_word_embeddings: true,
        num_hidden_layers: 3,
        ..Default::default()
    })
    .collect()
}

/// `method` as it reads on the model `spec` describes: on Phi-3, whose projections are fused,
/// q/k/v targets become `qkv_proj` and gate/up `gate_up_proj`, and IA³ (which PEFT gives no
/// default there) scales `qkv_proj` and `down_proj`.
pub fn for_family(method: &MethodConfig, spec: &TinySpec) -> MethodConfig {
    use peft_studio_engine::peft::{MethodKind, TargetModules};
    let mut m = method.clone();
    if spec.architecture != "Phi3ForCausalLM" {
        return m;
    }
    let fused = |name: &str| match name {
        "q_proj" | "k_proj" | "v_proj" => "qkv_proj".to_string(),
        "gate_proj" | "up_proj" => "gate_up_proj".to_string(),
        other => other.to_string(),
    };
    m.target_modules = match (&m.target_modules, m.kind) {
        (Some(TargetModules::List(names)), _) => {
            let mut names: Vec<String> = names.iter().map(|n| fused(n)).collect();
            names.dedup();
            Some(TargetModules::List(names))
        }
        (None, MethodKind::Ia3) => Some(TargetModules::parse_cli("qkv_proj,down_proj")),
        (t, _) => t.clone(),
    };
    m
}

/// [`gradient_model`] of the model `spec` describes (`method` read by [`for_family`]).
pub fn gradient_model_of(
    dir: &Path,
    method: &MethodConfig,
    dtype: candle_core::DType,
    spec: &TinySpec,
) -> (
    peft_studio_engine::model::LlamaModel,
    peft_studio_engine::peft::Trainables,
) {
    use candle_core::{Device, Tensor};
    use peft_studio_engine::ops::SplitMix64;
    let method = &for_family(method, spec);
    let path = tiny_model(dir, spec);
    let mut model =
        peft_studio_engine::model::load_model(&path, dtype, &Device::Cpu).expect("load");
    let vars = method.apply(&mut model, 3).expect("apply method");
    let mut rng = SplitMix64::new(11);
    for (name, var) in &vars {
        if name.ends_with("lora_B.weight") {
            let data: Vec<f64> = (0..var.elem_count())
                .map(|_| rng.next_f64() * 0.2 - 0.1)
                .collect();
            let t = Tensor::from_vec(data, var.shape().clone(), &Device::Cpu).expect("b");
            var.set(&t.to_dtype(dtype).expect("dtype")).expect("set");
        }
    }
    (model, vars)
}

/// Two examples for the gradient tests: one with a masked prompt, one fully trained.
pub fn gradient_examples() -> peft_studio_engine::data::Examples {
    use peft_studio_engine::data::{Example, Examples};
    Examples::new(
        vec![
            Example {
                ids: vec![1, 50, 60, 70, 80, 90, 100],
                loss_mask: vec![0, 0, 1, 1, 1, 1, 1],
                source: Vec::new(),
            },
            Example {
                ids: vec![3, 4, 5, 6],
                loss_mask: vec![1, 1, 1, 1],
                source: Vec::new(),
            },
        ],
        16,
        2,
        0,
    )
    .expect("examples")
}

/// Adds `delta` to entry `index` of `var` (f64).
fn bump(var: &candle_core::Var, index: usize, delta: f64) {
    let shape = var.shape().clone();
    let mut data: Vec<f64> = var
        .as_tensor()
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    data[index] += delta;
    var.set(&candle_core::Tensor::from_vec(data, shape, var.device()).expect("tensor"))
        .expect("set");
}

/// The central difference of `loss` in entry `index` of `var` (f64), the entry restored.
pub fn central_difference(
    var: &candle_core::Var,
    index: usize,
    eps: f64,
    mut loss: impl FnMut() -> f64,
) -> f64 {
    bump(var, index, eps);
    let up = loss();
    bump(var, index, -2.0 * eps);
    let down = loss();
    bump(var, index, eps);
    (up - down) / (2.0 * eps)
}

/// `|a − b|` relative to their size (absolute below 1e-7).
pub fn relative_error(a: f64, b: f64) -> f64 {
    (a - b).abs() / (a.abs() + b.abs()).max(1e-7)
}

/// Every LoRA B matrix among `vars` set to values in ±0.1 (B starts at zero, where an
/// adapter changes nothing and an export proves nothing).
pub fn randomise_b(vars: &[(String, candle_core::Var)]) {
    use candle_core::{Device, Tensor};
    let mut rng = peft_studio_engine::ops::SplitMix64::new(5);
    for (name, var) in vars {
        if name.ends_with("lora_B.weight") {
            let data: Vec<f32> = (0..var.elem_count())
                .map(|_| (rng.next_f64() * 0.2 - 0.1) as f32)
                .collect();
            var.set(&Tensor::from_vec(data, var.shape().clone(), &Device::Cpu).expect("t"))
                .expect("set");
        }
    }
}
