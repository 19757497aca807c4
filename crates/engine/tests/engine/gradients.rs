//! LoRA and DoRA gradients against central finite differences, in f64.

use candle_core::{DType, Device, Tensor};
use peft_studio_engine::data::{Example, Examples};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::{load_model, ForwardCtx, LlamaModel};
use peft_studio_engine::train::batch_loss;

use crate::common::{
    central_difference, family_specs, gradient_examples, gradient_model, gradient_model_of,
    lora_method, relative_error, tiny_model,
};

fn loss_of(model: &LlamaModel, examples: &Examples) -> (Tensor, f64) {
    let batch = examples.batch_at(0, model.device()).expect("batch");
    let (loss, _) = batch_loss(model, &batch, &ForwardCtx::eval()).expect("loss");
    let v = loss.to_scalar::<f64>().expect("scalar");
    (loss, v)
}

#[test]
fn lora_gradients_match_central_finite_differences() {
    let mut method = lora_method(4, "all-linear");
    method.use_rslora = true;
    check_gradients(&method, 6 * 7 * 2, |_| true);
}

/// DoRA's magnitudes against finite differences. Its A and B are not: PEFT holds the row norm
/// constant in the backward pass, so their gradient is not the forward function's derivative;
/// `reference::dora_gradients_match_peft` checks them against PEFT's autograd instead.
#[test]
fn dora_magnitude_gradients_match_central_finite_differences() {
    let mut method = lora_method(4, "all-linear");
    method.use_dora = true;
    check_gradients(&method, 6 * 7, |name| {
        name.ends_with("lora_magnitude_vector")
    });
}

#[test]
fn ia3_gradients_match_central_finite_differences() {
    let method = peft_studio_engine::peft::MethodConfig {
        kind: peft_studio_engine::peft::MethodKind::Ia3,
        target_modules: Some(peft_studio_engine::peft::TargetModules::parse_cli(
            "all-linear",
        )),
        feedforward_modules: Some(peft_studio_engine::peft::TargetModules::parse_cli(
            "down_proj,up_proj",
        )),
        ..Default::default()
    };
    check_gradients(&method, 6 * 7, |_| true);
}

#[test]
fn prompt_tuning_gradients_match_central_finite_differences() {
    let method = peft_studio_engine::peft::MethodConfig {
        kind: peft_studio_engine::peft::MethodKind::PromptTuning,
        num_virtual_tokens: 3,
        ..Default::default()
    };
    check_gradients(&method, 3, |_| true);
}

#[test]
fn prefix_tuning_gradients_match_central_finite_differences() {
    let method = peft_studio_engine::peft::MethodConfig {
        kind: peft_studio_engine::peft::MethodKind::PrefixTuning,
        num_virtual_tokens: 3,
        ..Default::default()
    };
    check_gradients(&method, 3, |_| true);
}

#[test]
fn bottleneck_gradients_match_central_finite_differences() {
    use peft_studio_engine::peft::{MethodConfig, MethodKind};
    for kind in [MethodKind::Houlsby, MethodKind::Pfeiffer] {
        let method = MethodConfig {
            kind,
            reduction_factor: 4,
            ..Default::default()
        };
        check_gradients(&method, 3 * 8, |_| true);
    }
}

/// Every method on every family with parts of its own (Gemma 3: `1 + w` norms, four norms
/// per layer, q/k norms, GeGLU, scaled embeddings, its score factor, sliding layers with
/// their own rotary base; Qwen3: q/k norms; Mistral: a sliding window), against central
/// differences: the 7-token example sees past the 4-position window.
#[test]
fn every_family_s_gradients_match_central_finite_differences() {
    let mut dora = lora_method(4, "all-linear");
    dora.use_dora = true;
    let methods = [
        (lora_method(4, "all-linear"), 6 * 7 * 3),
        (
            peft_studio_engine::peft::MethodConfig {
                kind: peft_studio_engine::peft::MethodKind::Ia3,
                ..Default::default()
            },
            3 * 3 * 3,
        ),
        (
            peft_studio_engine::peft::MethodConfig {
                kind: peft_studio_engine::peft::MethodKind::PromptTuning,
                num_virtual_tokens: 3,
                ..Default::default()
            },
            3,
        ),
        (
            peft_studio_engine::peft::MethodConfig {
                kind: peft_studio_engine::peft::MethodKind::PrefixTuning,
                num_virtual_tokens: 3,
                ..Default::default()
            },
            3,
        ),
        (
            peft_studio_engine::peft::MethodConfig {
                kind: peft_studio_engine::peft::MethodKind::Houlsby,
                reduction_factor: 4,
                ..Default::default()
            },
            3 * 3,
        ),
    ];
    for spec in family_specs() {
        // Phi-3 has four linear layers per block (fused projections), the others seven.
        let linears = if spec.architecture == "Phi3ForCausalLM" {
            4
        } else {
            7
        };
        for (method, min) in &methods {
            eprintln!("{} {:?}", spec.architecture, method.kind);
            check_gradients_of(&spec, method, min * linears / 7, |_| true);
        }
        eprintln!("{} DoRA magnitudes", spec.architecture);
        check_gradients_of(&spec, &dora, 6 * 3 * linears / 7, |name| {
            name.ends_with("lora_magnitude_vector")
        });
    }
}

/// Compares three entries of each trainable tensor of `method` that `checked_names` picks
/// with central differences.
fn check_gradients(
    method: &peft_studio_engine::peft::MethodConfig,
    min_checked: usize,
    checked_names: fn(&str) -> bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model, vars) = gradient_model(dir.path(), method, DType::F64);
    check_model_gradients(&model, &vars, min_checked, checked_names);
}

/// [`check_gradients`] on the model `spec` describes.
fn check_gradients_of(
    spec: &peft_studio_engine::fixtures::TinySpec,
    method: &peft_studio_engine::peft::MethodConfig,
    min_checked: usize,
    checked_names: fn(&str) -> bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model, vars) = gradient_model_of(dir.path(), method, DType::F64, spec);
    check_model_gradients(&model, &vars, min_checked, checked_names);
}

fn check_model_gradients(
    model: &LlamaModel,
    vars: &peft_studio_engine::peft::Trainables,
    min_checked: usize,
    checked_names: fn(&str) -> bool,
) {
    let examples = gradient_examples();
    let (loss, _) = loss_of(model, &examples);
    let grads = loss.backward().expect("backward");
    let eps = 1e-5;
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (name, var) in vars.iter().filter(|(n, _)| checked_names(n)) {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("vec");
        for &i in &[0, var.elem_count() / 2, var.elem_count() - 1] {
            let numeric = central_difference(var, i, eps, || loss_of(model, &examples).1);
            let rel = relative_error(numeric, g[i]);
            worst = worst.max(rel);
            assert!(
                rel < 1e-3,
                "{name}[{i}]: analytic {} vs numeric {numeric} (rel {rel})",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= min_checked, "checked {checked} entries");
    eprintln!("checked {checked} gradient entries, worst relative error {worst:e}");
}

#[test]
fn every_trainable_tensor_receives_a_gradient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    for method in [lora_method(2, "all-linear"), {
        let mut m = lora_method(2, "q_proj");
        m.kind = peft_studio_engine::peft::MethodKind::Full;
        m
    }] {
        let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
        let vars = method.apply(&mut model, 0).expect("apply");
        let examples = Examples::new(
            vec![Example {
                ids: vec![1, 2, 3, 4, 5],
                loss_mask: vec![1; 5],
                source: Vec::new(),
            }],
            8,
            1,
            0,
        )
        .expect("ex");
        let batch = examples.batch_at(0, &Device::Cpu).expect("batch");
        let (loss, _) = batch_loss(&model, &batch, &ForwardCtx::eval()).expect("loss");
        let grads = loss.backward().expect("backward");
        for (name, var) in &vars {
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "{:?}: `{name}` got no gradient",
                method.kind
            );
        }
    }
}
