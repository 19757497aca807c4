//! The subcommands, each a thin layer over the engine and the app layer.

use std::path::{Path, PathBuf};

use candle_core::DType;
use peft_studio_app::demo::{demo_train, write_demo_dataset};
use peft_studio_engine::chat::Message;
use peft_studio_engine::device::DeviceRequest;
use peft_studio_engine::generate::{generate, GenerateOptions};
use peft_studio_engine::memory::{self, StepShape};
use peft_studio_engine::model::load::{base_formats, load_model_quantized};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::peft::describe;
use peft_studio_engine::peft::{load::attach_adapter, target, MethodConfig, TargetModules};
use peft_studio_engine::plan::count_params;
use peft_studio_engine::run::{self, RunConfig};
use peft_studio_engine::tokenizer::TextTokenizer;
use peft_studio_engine::{EngineError, Result};

use crate::args::{
    AdaptersCommand, Cli, Command, ExportArgs, GenerateArgs, LogitsArgs, MethodArgs, TrainArgs,
};

/// Runs one subcommand.
pub fn run(cli: Cli) -> peft_studio_app::Result<()> {
    let catalog = cli
        .catalog
        .clone()
        .unwrap_or_else(peft_studio_app::default_catalog_path);
    if let Some(device) = &cli.device {
        let request: peft_studio_engine::device::DeviceRequest = device.parse()?;
        // Set before any thread starts; workers started from here inherit it.
        std::env::set_var(peft_studio_engine::device::DEVICE_VAR, request.to_string());
    }
    if cli.command.computes() {
        peft_studio_engine::device::check_device()?;
    }
    match cli.command {
        Command::Plan(a) => {
            let model = resolve_model(&a.model)?;
            let cfg = LlamaConfig::from_path(&model)?;
            let folder = if model.is_file() {
                model.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                model.clone()
            };
            let quantized = base_formats(&folder, a.quantize)?;
            let mut method = MethodConfig::default();
            apply_method_args(&mut method, &a.method)?;
            let counts = count_params(&cfg, &method)?;
            println!("{counts}");
            let cpu = match cli.device.as_deref().map(str::parse).transpose()? {
                None | Some(DeviceRequest::Auto) => run::default_device().is_cpu(),
                Some(request) => request == DeviceRequest::Cpu,
            };
            let step = StepShape {
                batch: a.batch_size,
                seq_len: a.seq_len,
                dtype: a.precision.dtype(),
                cpu,
                checkpointing: a.gradient_checkpointing,
                quantized,
            };
            let estimate = memory::estimate(&cfg, &method, step)?;
            let base = quantized.map_or_else(String::new, |f| {
                format!(", projections in {}", f.projections)
            });
            println!(
                "{estimate} for batch {} x {} tokens, {}{base}",
                a.batch_size, a.seq_len, a.precision
            );
            if !cpu {
                println!("{}", memory::gpu_fit(&cfg, &method, step)?);
            } else if let Some(fit) = memory::machine_fit(estimate.total()) {
                println!("{fit}");
            }
            Ok(())
        }
        Command::Methods(a) => {
            methods(a.json);
            Ok(())
        }
        Command::Train(a) => {
            let (cfg, reserved) = train_config(&a)?;
            crate::runs::train(&catalog, &cfg, a.name.as_deref(), a.detach, &a.output).inspect_err(
                |_| {
                    // A refused run leaves no empty folder of ours behind.
                    if reserved {
                        let _ = std::fs::remove_dir(&cfg.out);
                    }
                },
            )
        }
        Command::Resume(a) => {
            crate::runs::resume(&catalog, &a.run, a.max_steps, a.detach, &a.output)
        }
        Command::Runs(c) => crate::runs::runs(&catalog, c),
        Command::Compare(a) => crate::runs::compare(&catalog, &a),
        Command::Worker(a) => crate::runs::worker(&catalog, a.run),
        Command::Export(a) => export(&catalog, a),
        Command::Generate(a) => Ok(generate_cmd(a)?),
        Command::Logits(a) => Ok(logits_cmd(a)?),
        Command::Bench(a) => Ok(crate::bench::bench(&a)?),
        Command::Demo(a) => Ok(demo(&a.out, a.model.as_deref())?),
        Command::Adapters(c) => adapters(&catalog, c),
        Command::Models(c) => Ok(crate::models::run(c)?),
        Command::Data(c) => Ok(crate::data::run(c)?),
    }
}

/// A model folder as given, or the folder of the installed model of that name.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    peft_studio_engine::library::resolve(&peft_studio_engine::library::studio_home(), model)
}

/// Applies method flags on top of a method config.
pub fn apply_method_args(m: &mut MethodConfig, a: &MethodArgs) -> Result<()> {
    if let Some(k) = &a.method {
        let kind = k.parse()?;
        if kind != m.kind && a.target_modules.is_none() {
            // Targets belong to a method: switching methods starts from the new one's defaults.
            m.target_modules = None;
            m.feedforward_modules = None;
        }
        m.kind = kind;
    }
    if let Some(r) = a.r {
        m.r = r;
    }
    if let Some(alpha) = a.lora_alpha {
        m.lora_alpha = alpha;
    }
    if let Some(d) = a.lora_dropout {
        m.lora_dropout = d;
    }
    if a.use_rslora {
        m.use_rslora = true;
    }
    if a.use_dora {
        m.use_dora = true;
    }
    if let Some(t) = &a.target_modules {
        m.target_modules = Some(TargetModules::parse_cli(t));
    }
    if let Some(f) = a.reduction_factor {
        m.reduction_factor = f;
    }
    if let Some(n) = a.num_virtual_tokens {
        m.num_virtual_tokens = n;
    }
    if let Some(init) = &a.prompt_tuning_init {
        m.prompt_tuning_init = init.parse()?;
    }
    if let Some(text) = &a.prompt_tuning_init_text {
        m.prompt_tuning_init = peft_studio_engine::peft::PromptInit::Text;
        m.prompt_tuning_init_text = Some(text.clone());
    }
    if let Some(t) = &a.feedforward_modules {
        m.feedforward_modules = Some(TargetModules::parse_cli(t));
    }
    if let Some(l) = &a.layers_to_transform {
        m.layers_to_transform = Some(target::parse_layers(l)?);
    }
    if let Some(t) = &a.trainable_modules {
        m.trainable_modules = t
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(n) = a.trainable_last_layers {
        m.trainable_last_layers = n;
    }
    Ok(())
}

/// Prints every method with its hyperparameters (a table, or JSON for the app).
fn methods(json: bool) {
    let all = describe::methods();
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return;
    }
    for m in all {
        println!(
            "{:<14} {} ({} format)",
            m.kind.as_str(),
            m.summary,
            m.exported_as
        );
        for p in m.params {
            let default = match p.default {
                serde_json::Value::Null => "method default".to_string(),
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            println!(
                "    --{:<26} {} [{default}]",
                p.field.replace('_', "-"),
                p.help
            );
        }
    }
}

/// The run config `train` starts: the config file (if any) with the flags applied on top.
/// The run config from the file and flags, and whether its folder was reserved here (no
/// `out` given).
fn train_config(a: &TrainArgs) -> Result<(RunConfig, bool)> {
    let mut cfg = match &a.config {
        Some(path) => RunConfig::from_toml_file(path)?,
        None => {
            let missing = |f: &str| EngineError::config(f, format!("give --{f} or --config"));
            RunConfig {
                model: a.model.clone().ok_or_else(|| missing("model"))?,
                dataset: a.dataset.clone().ok_or_else(|| missing("dataset"))?,
                out: PathBuf::new(),
                method: MethodConfig::default(),
                train: Default::default(),
                data: Default::default(),
            }
        }
    };
    if let Some(m) = &a.model {
        cfg.model = m.clone();
    }
    if let Some(d) = &a.dataset {
        cfg.dataset = d.clone();
    }
    if let Some(o) = &a.out {
        cfg.out = o.clone();
    }
    cfg.model = resolve_model(&cfg.model)?;
    if let Some(f) = &a.format {
        cfg.data.format = f.parse()?;
    }
    if let Some(v) = &a.val_dataset {
        cfg.data.val_dataset = Some(v.clone());
    }
    if a.skip_bad_records {
        cfg.data.on_bad_records = peft_studio_engine::data::OnBadRecords::Skip;
    }
    apply_method_args(&mut cfg.method, &a.method)?;
    let t = &mut cfg.train;
    if let Some(v) = a.lr {
        t.lr = v;
    }
    if let Some(v) = a.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = a.grad_accum {
        t.grad_accum = v;
    }
    if let Some(v) = a.seq_len {
        t.seq_len = v;
    }
    if let Some(v) = a.max_steps {
        t.max_steps = Some(v);
    }
    if a.gradient_checkpointing {
        t.gradient_checkpointing = true;
    }
    if let Some(v) = a.precision {
        t.precision = v;
    }
    if let Some(v) = a.quantize {
        t.quantize = Some(v);
    }
    if let Some(v) = a.epochs {
        t.epochs = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    let reserved = cfg.out.as_os_str().is_empty();
    if reserved {
        cfg.out = peft_studio_app::launch::reserve_out_dir(cfg.method.kind.as_str())?;
    }
    Ok((cfg, reserved))
}

fn export(catalog: &Path, a: ExportArgs) -> peft_studio_app::Result<()> {
    use peft_studio_app::export::{export_checkpoint, latest_checkpoint, ExportFormat};
    let format: ExportFormat = a.format.parse()?;
    let checkpoint = match (&a.checkpoint, &a.run) {
        (Some(c), _) => c.clone(),
        (None, Some(key)) => {
            let dir = if Path::new(key).join("run.toml").is_file() {
                PathBuf::from(key)
            } else {
                let catalog = crate::runs::open(catalog)?;
                PathBuf::from(crate::runs::find_run(&catalog, key)?.out_dir)
            };
            latest_checkpoint(&dir)?
        }
        (None, None) => return Err(EngineError::config("run", "give --run or --checkpoint").into()),
    };
    export_checkpoint(&checkpoint, format, &a.out)?;
    eprintln!("exported {} to {}", checkpoint.display(), a.out.display());
    Ok(())
}

fn adapters(catalog: &Path, c: AdaptersCommand) -> peft_studio_app::Result<()> {
    let catalog = crate::runs::open(catalog)?;
    match c {
        AdaptersCommand::List => {
            for a in catalog.adapters(None)? {
                let run = a.run_id.map_or_else(|| "-".into(), |r| r.to_string());
                println!(
                    "{:>4}  {:<14} run {:<5} {:>10} B  {}  (base {})",
                    a.id, a.method, run, a.size_bytes, a.path, a.base_model
                );
            }
        }
        AdaptersCommand::Import { path, model } => {
            let base = model.as_deref().map(resolve_model).transpose()?;
            let store = peft_studio_engine::library::studio_home().join("adapters");
            let done = peft_studio_app::adapters::import_adapter(
                &catalog,
                &store,
                &path,
                base.as_deref(),
            )?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            println!("imported adapter {} at {}", done.id, done.path.display());
        }
    }
    Ok(())
}

fn logits_cmd(a: LogitsArgs) -> Result<()> {
    let dir = resolve_model(&a.model)?;
    let device = run::default_device();
    let mut model = load_model_quantized(&dir, DType::F32, &device, a.quantize)?;
    if let Some(adapter) = &a.adapter {
        attach_adapter(&mut model, adapter, Some(0.0))?;
    }
    let ids: Vec<u32> = a
        .ids
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| EngineError::config("ids", format!("`{s}` is not a token id")))
        })
        .collect::<Result<_>>()?;
    let vocab = model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(EngineError::config(
            "ids",
            format!("{bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let input = candle_core::Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
    let logits = model
        .forward(&input, None, &peft_studio_engine::model::ForwardCtx::eval())?
        .squeeze(0)?;
    peft_studio_engine::fsutil::write_atomic(
        &a.out,
        &peft_studio_engine::fsutil::safetensors_bytes(&[("logits".to_string(), logits)], None)?,
    )
}

fn generate_cmd(mut a: GenerateArgs) -> Result<()> {
    use std::io::Write;
    a.model = resolve_model(&a.model)?;
    let device = run::default_device();
    let mut model = load_model_quantized(&a.model, DType::F32, &device, a.quantize)?;
    let tok = TextTokenizer::load(&a.model, &model.config().eos_token_ids)?;
    if let Some(dir) = &a.adapter {
        attach_adapter(&mut model, dir, Some(0.0))?;
    }
    let prompt = if a.chat {
        tok.compiled_chat_template()?.render(
            &[Message {
                role: "user".into(),
                content: a.prompt.clone(),
            }],
            true,
        )?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&prompt, !a.chat)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    // Stream text as it forms: decode the whole continuation and print what is new.
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    generate(&model, &ids, tok.eos_ids(), &opts, |id| {
        produced.push(id);
        if let Ok(text) = tok.decode(&produced) {
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{fffd}')
            {
                let _ = write!(stdout, "{}", &text[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
        }
    })?;
    let text = tok.decode(&produced)?;
    if text.len() > printed {
        print!("{}", text.get(printed..).unwrap_or(""));
    }
    println!();
    Ok(())
}

/// Writes the demo dataset and a run config that trains on it: with `model` (a folder or an
/// installed model's name) LoRA on q/k/v/o at a rate suited to a pretrained model, otherwise
/// all-linear LoRA on a small model made in code.
fn demo(out: &Path, model: Option<&Path>) -> Result<()> {
    use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
    use peft_studio_engine::fsutil::write_atomic;
    if let Some(model) = model {
        let model = resolve_model(model)?;
        write_demo_dataset(out)?;
        let cfg = RunConfig {
            model,
            dataset: out.join("dataset.jsonl"),
            out: out.join("runs").join("demo"),
            method: MethodConfig {
                r: 8,
                lora_alpha: 16.0,
                target_modules: Some(TargetModules::parse_cli("q_proj,k_proj,v_proj,o_proj")),
                ..Default::default()
            },
            train: demo_train(2e-3, 2),
            data: Default::default(),
        };
        write_atomic(&out.join("run.toml"), cfg.to_toml()?.as_bytes())?;
        eprintln!("demo dataset and run config written to {}", out.display());
        return Ok(());
    }
    let model = out.join("model");
    if !model.join("config.json").is_file() {
        let spec = TinySpec {
            hidden_size: 64,
            intermediate_size: 128,
            ..Default::default()
        };
        write_tiny_model(&model, &spec)?;
    }
    write_demo_dataset(out)?;
    let method = MethodConfig {
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..Default::default()
    };
    let cfg = RunConfig {
        model,
        dataset: out.join("dataset.jsonl"),
        out: out.join("runs").join("demo"),
        method,
        train: demo_train(1e-2, 20),
        data: Default::default(),
    };
    write_atomic(&out.join("run.toml"), cfg.to_toml()?.as_bytes())?;
    eprintln!(
        "demo model, dataset and run config written to {}",
        out.display()
    );
    Ok(())
}
