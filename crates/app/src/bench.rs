//! `bench`: training throughput and peak memory for one config on synthetic tokens, with
//! the step split into forward, backward and optimiser time, and what the CPU's products reach
//! at the model's shape.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use peft_studio_engine::data::Batch;
use peft_studio_engine::device::default_device;
use peft_studio_engine::model::fused::bf16_matmul::Kernel;
use peft_studio_engine::model::fused::rates;
use peft_studio_engine::model::load::load_model_held;
use peft_studio_engine::model::t5::{is_t5, T5Model};
use peft_studio_engine::model::ForwardCtx;
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::ops::SplitMix64;
use peft_studio_engine::peft::Trainables;
use peft_studio_engine::sysinfo::peak_rss_bytes;
use peft_studio_engine::train::optimizer::{collect_grads, AdamW};
use peft_studio_engine::train::{batch_loss, Objective};
use peft_studio_engine::Result as EngineResult;

use crate::error::Result;
use crate::models::resolve_model;
use crate::plan::Quantization;
use crate::runs::{MethodConfig, Precision};

/// One benchmark: a model, a method and a step's shape.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// A model folder or an installed model's name.
    pub model: PathBuf,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Examples per batch.
    pub batch_size: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Timed steps (one more runs first, untimed).
    pub steps: usize,
    /// With gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// The number format training computes in.
    pub precision: Precision,
    /// The projections held quantized.
    pub quantize: Option<Quantization>,
}

/// Runs the benchmark; each figure goes to `out` as a line of `key=value` pairs (the form
/// bench scripts read), as soon as it is known. A T5 trains on random sources and targets of
/// `seq_len` tokens each (tokens counted once per example, as PyTorch's side counts them).
pub fn bench(a: &BenchRequest, out: &mut dyn FnMut(String)) -> Result<()> {
    let device = default_device();
    let dir = resolve_model(&a.model)?;
    let dtype = a.precision.dtype();
    let n = a.batch_size * a.seq_len;
    let mut rng = SplitMix64::new(1);
    let mut random_ids = |vocab: usize| -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = (0..n)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        Tensor::from_vec(ids, (a.batch_size, a.seq_len), &device)
    };
    let weights = Tensor::ones((a.batch_size, a.seq_len), DType::F32, &device)?;
    if is_t5(&dir) {
        let mut model = T5Model::load_quantized(&dir, dtype, &device, a.quantize)?;
        loaded(out);
        let trainables = a.method.apply_t5(&mut model, 0, None)?;
        let (source, labels) = (
            random_ids(model.config().vocab_size)?,
            random_ids(model.config().vocab_size)?,
        );
        let rows: Vec<Vec<i64>> = labels
            .to_vec2::<u32>()?
            .into_iter()
            .map(|r| r.into_iter().map(i64::from).collect())
            .collect();
        let decoder: Vec<u32> = model.shift_right(&rows).concat();
        let batch = Batch {
            input_ids: Tensor::from_vec(decoder, (a.batch_size, a.seq_len), &device)?,
            targets: labels,
            weights: weights.clone(),
            tokens: n,
            source: Some((source, weights)),
        };
        return timed(a, &model, &trainables, &batch, out);
    }
    let frozen = a.method.kind.keeps_base_frozen();
    let mut model = load_model_held(&dir, dtype, &device, a.quantize, frozen)?;
    loaded(out);
    let trainables = a.method.apply(&mut model, 0)?;
    let ids = random_ids(model.config().vocab_size)?;
    let batch = Batch {
        input_ids: ids.clone(),
        targets: ids,
        weights,
        tokens: n,
        source: None,
    };
    timed(a, &model, &trainables, &batch, out)?;
    if device.is_cpu() {
        product_rates(model.config(), out);
    }
    Ok(())
}

/// This process's peak resident memory so far, in MiB, where the system says.
pub fn peak_rss_mb() -> Option<f64> {
    peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

/// The peak so far, which is loading's.
fn loaded(out: &mut dyn FnMut(String)) {
    if let Some(rss) = peak_rss_mb() {
        out(format!("load_peak_rss_mb={rss:.1}"));
    }
}

/// Times `a.steps` training steps of `model` on `batch` (after one untimed step) and writes
/// the figures.
fn timed(
    a: &BenchRequest,
    model: &dyn Objective,
    trainables: &Trainables,
    batch: &Batch,
    out: &mut dyn FnMut(String),
) -> Result<()> {
    let device = model.device().clone();
    let vars: Vec<&Var> = trainables.iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(&vars, 0.9, 0.999, 1e-8, 0.0)?;
    let (fwd, bwd, optim) = peft_studio_engine::threads::on_compute_pool(|| -> EngineResult<_> {
        let (mut fwd, mut bwd, mut optim) = (0.0, 0.0, 0.0);
        for step in 0..=a.steps {
            let t0 = Instant::now();
            let ctx = ForwardCtx::train(step as u64).with_checkpointing(a.gradient_checkpointing);
            let (loss, _) = batch_loss(model, batch, &ctx)?;
            loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let grads = collect_grads(&vars, &loss.backward()?)?;
            // A GPU works asynchronously: each timed phase ends when the device is done.
            device.synchronize()?;
            let t2 = Instant::now();
            opt.step(&vars, &grads, 1e-4)?;
            device.synchronize()?;
            let t3 = Instant::now();
            if step > 0 {
                fwd += (t1 - t0).as_secs_f64();
                bwd += (t2 - t1).as_secs_f64();
                optim += (t3 - t2).as_secs_f64();
            }
        }
        Ok((fwd, bwd, optim))
    })?;
    let steps = a.steps.max(1) as f64;
    let total = fwd + bwd + optim;
    out(format!(
        "steps={} batch={} seq_len={} precision={} trainable_params={} device={} matmul={} bf16_products={}",
        a.steps,
        a.batch_size,
        a.seq_len,
        a.precision,
        vars.iter().map(|v| v.elem_count()).sum::<usize>(),
        crate::launch::device_name(),
        peft_studio_engine::model::fused::matmul_backend(),
        Kernel::best().map_or("widened", Kernel::name)
    ));
    out(format!(
        "step_s={:.4} forward_s={:.4} backward_s={:.4} optimizer_s={:.4}",
        total / steps,
        fwd / steps,
        bwd / steps,
        optim / steps
    ));
    if let Some(rss) = peak_rss_mb() {
        out(format!("peak_rss_mb={rss:.1}"));
    }
    out(format!(
        "tokens_per_s={:.1}",
        batch.tokens as f64 * steps / total.max(1e-9)
    ));
    Ok(())
}

/// What the CPU's products reach at this model's MLP shape (512 rows): the ceiling a step's
/// time is read against, f32 and each bf16 kernel.
fn product_rates(config: &LlamaConfig, out: &mut dyn FnMut(String)) {
    let r = rates::measure(512, config.hidden_size, config.intermediate_size, 3);
    let (rows, fan_in, outputs) = r.shape;
    let bf16: String = r
        .bf16
        .iter()
        .map(|(k, g)| format!(" {}={g:.0}", k.name()))
        .chain(
            r.quantized
                .iter()
                .map(|(label, g)| format!(" {label}={g:.0}")),
        )
        .collect();
    out(format!(
        "products_gflops shape={rows}x{fan_in}x{outputs} f32={:.0}{bf16}",
        r.f32
    ));
    let gradients: String = r
        .gradients
        .iter()
        .map(|(label, g)| format!(" {label}={g:.0}"))
        .collect();
    out(format!("input_gradient_gflops{gradients}"));
    if let Some(peak) = r.f32_peak {
        out(format!(
            "f32_peak_gflops={peak:.0} f32_products_of_peak={:.2}",
            r.f32 / peak
        ));
    }
}
