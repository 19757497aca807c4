//! The subcommands, each a thin layer over the engine and the app layer.

use std::path::{Path, PathBuf};

use peft_studio_app::bench::{bench, peak_rss_mb, BenchRequest};
use peft_studio_app::demo::write_demo;
use peft_studio_app::describe::methods as described_methods;
use peft_studio_app::device::{check_device, DeviceRequest, DEVICE_VAR};
use peft_studio_app::launch::create_reserved;
use peft_studio_app::logits::{parse_ids, write_logits};
use peft_studio_app::models::resolve_model;
use peft_studio_app::plan::{plan, PlanRequest};
use peft_studio_app::playground::{GenerateOptions, GenerateRequest, Loaded};
use peft_studio_app::runs::{
    method_with_overrides, with_overrides, Format, MethodConfig, RunConfig,
};
use peft_studio_app::{EngineError, Result};
use toml::{Table, Value};

use crate::args::{
    AdaptersCommand, BenchArgs, Cli, Command, EvalArgs, ExportArgs, GenerateArgs, LogitsArgs,
    PlanArgs, ServeArgs, TrainArgs,
};

/// Runs one subcommand.
pub fn run(cli: Cli) -> Result<()> {
    let catalog = cli
        .catalog
        .clone()
        .unwrap_or_else(peft_studio_app::default_catalog_path);
    if let Some(device) = &cli.device {
        let request: DeviceRequest = device.parse()?;
        // Set before any thread starts; workers started from here inherit it.
        std::env::set_var(DEVICE_VAR, request.to_string());
    }
    if cli.command.computes() {
        check_device()?;
    }
    match cli.command {
        Command::Plan(a) => plan_cmd(&a, cli.device.as_deref()),
        Command::Methods(a) => {
            methods(a.json);
            Ok(())
        }
        Command::Train(a) => {
            let (cfg, reserved) = train_config(&a)?;
            if a.bundle_only {
                return write_bundle(&cfg);
            }
            let catalog = crate::runs::open(&catalog)?;
            let id = create_reserved(&catalog, &cfg, a.name.as_deref(), reserved)?;
            crate::runs::start(&catalog, id, a.detach, &a.output)
        }
        Command::Resume(a) => {
            crate::runs::resume(&catalog, &a.run, a.max_steps, a.detach, &a.output)
        }
        Command::Runs(c) => crate::runs::runs(&catalog, c),
        Command::Compare(a) => crate::runs::compare(&catalog, &a),
        Command::Export(a) => export(&catalog, a),
        Command::Generate(a) => generate_cmd(a),
        Command::Serve(a) => serve_cmd(a),
        Command::Eval(a) => eval_cmd(&catalog, a),
        Command::Logits(a) => logits_cmd(a),
        Command::Bench(a) => bench_cmd(&a),
        Command::Demo(a) => {
            eprintln!("{}", write_demo(&a.out, a.model.as_deref())?);
            Ok(())
        }
        Command::Adapters(c) => adapters(&catalog, c),
        Command::Models(c) => crate::models::run(c),
        Command::Data(c) => crate::data::run(c),
    }
}

/// `plan`: PEFT's parameter line, the predicted peak memory and whether it fits.
fn plan_cmd(a: &PlanArgs, device: Option<&str>) -> Result<()> {
    let method = method_with_overrides(&MethodConfig::default(), &a.method.0)?;
    let cpu = match device.map(str::parse).transpose()? {
        None | Some(DeviceRequest::Auto) => None,
        Some(request) => Some(request == DeviceRequest::Cpu),
    };
    let p = plan(&PlanRequest {
        model: a.model.clone(),
        method,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        checkpointing: a.gradient_checkpointing,
        precision: a.precision,
        quantize: a.quantize,
        cpu,
    })?;
    println!("{}", p.line);
    let base = p
        .projections
        .map_or_else(String::new, |f| format!(", projections in {f}"));
    match p.memory {
        Some(memory) => println!(
            "{memory} for batch {} x {} tokens, {}{base}",
            a.batch_size, a.seq_len, a.precision
        ),
        None => println!("peak memory: not predicted for this model yet"),
    }
    if let Some(fit) = p.fit {
        println!("{fit}");
    }
    Ok(())
}

/// Prints every method with its hyperparameters (a table, or JSON for the app).
fn methods(json: bool) {
    let all = described_methods();
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

/// The run config `train` starts: the config file (if any), with the paths given and every
/// setting flag laid over it; and whether its folder was reserved here (no `out` given).
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
                eval: Default::default(),
                target: Default::default(),
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
    let mut data = Table::new();
    if let Some(f) = &a.format {
        data.insert("format".into(), f.parse::<Format>()?.to_string().into());
    }
    if let Some(v) = &a.val_dataset {
        data.insert("val_dataset".into(), v.display().to_string().into());
    }
    if a.skip_bad_records {
        data.insert("on_bad_records".into(), "skip".into());
    }
    let mut eval = Table::new();
    if let Some(t) = &a.eval_task {
        eval.insert("task".into(), t.clone().into());
    }
    if let Some(d) = &a.eval_data {
        let d = std::path::absolute(d).unwrap_or_else(|_| d.clone());
        eval.insert("data".into(), d.display().to_string().into());
    }
    let overrides = Table::from_iter([
        ("method".to_string(), Value::Table(a.method.0.clone())),
        ("train".to_string(), Value::Table(a.train.0.clone())),
        ("data".to_string(), Value::Table(data)),
        ("eval".to_string(), Value::Table(eval)),
        ("target".to_string(), Value::Table(target_flags(a, &cfg)?)),
    ]);
    let mut cfg = with_overrides(&cfg, &overrides)?;
    let reserved = cfg.out.as_os_str().is_empty();
    if reserved {
        cfg.out = peft_studio_app::launch::reserve_out_dir(cfg.method.kind.as_str())?;
    }
    Ok((cfg, reserved))
}

/// `train --bundle-only`: the bundle alone, with how to start it.
fn write_bundle(cfg: &RunConfig) -> Result<()> {
    use peft_studio_app::launch::{LAUNCH_SCRIPT, SBATCH_SCRIPT};
    let dir = peft_studio_app::launch::write_bundle(cfg)?;
    let python = &cfg.target.python;
    println!("bundle written to {}", dir.display());
    println!("start it there:       PYTHON={python} sh {LAUNCH_SCRIPT}");
    println!("or on a Slurm node:   cd BUNDLE && sbatch {SBATCH_SCRIPT}");
    println!("its events: out/events.jsonl; its adapter: out/adapter; stop it: touch STOP");
    Ok(())
}

/// The `[target]` fields `train`'s flags set.
fn target_flags(a: &TrainArgs, cfg: &RunConfig) -> Result<Table> {
    let mut target = Table::new();
    if let Some(text) = &a.target {
        let mut parsed = cfg.target.clone();
        parsed.parse_kind(text)?;
        target.insert("kind".into(), parsed.kind.as_str().into());
        if let Some(host) = parsed.host {
            target.insert("host".into(), host.into());
        }
    }
    if let Some(n) = a.processes {
        target.insert("processes".into(), Value::Integer(n as i64));
    }
    if let Some(options) = &a.ssh_options {
        let list = options.split_whitespace().map(Value::from).collect();
        target.insert("ssh_options".into(), Value::Array(list));
    }
    for (field, value) in [
        ("device", &a.job_device),
        ("strategy", &a.strategy),
        ("python", &a.python),
        ("remote_dir", &a.remote_dir),
        ("remote_model", &a.remote_model),
    ] {
        if let Some(v) = value {
            target.insert(field.into(), v.clone().into());
        }
    }
    Ok(target)
}

fn export(catalog: &Path, a: ExportArgs) -> Result<()> {
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

fn adapters(catalog: &Path, c: AdaptersCommand) -> Result<()> {
    use peft_studio_app::serve::remote;
    // Loading into a server needs no catalog.
    match &c {
        AdaptersCommand::Load { name, path, server } => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let path = path.display().to_string();
            remote::load_adapter(&server.server, server.api_key.as_deref(), name, &path)?;
            println!("{}: serving adapter `{name}` from {path}", server.server);
            return Ok(());
        }
        AdaptersCommand::Unload { name, server } => {
            remote::unload_adapter(&server.server, server.api_key.as_deref(), name)?;
            println!("{}: adapter `{name}` unloaded", server.server);
            return Ok(());
        }
        _ => {}
    }
    let catalog = crate::runs::open(catalog)?;
    match c {
        AdaptersCommand::Load { .. } | AdaptersCommand::Unload { .. } => {}
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
            let done =
                peft_studio_app::adapters::import_into_library(&catalog, &path, model.as_deref())?;
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            println!("imported adapter {} at {}", done.id, done.path.display());
        }
    }
    Ok(())
}

fn eval_cmd(catalog: &Path, a: EvalArgs) -> Result<()> {
    use peft_studio_app::eval::{evaluate, EvalRequest, Target};
    use std::io::Write;
    let catalog = crate::runs::open(catalog)?;
    let task = a
        .task
        .parse()
        .map_err(|e: String| EngineError::config("task", e))?;
    let format: peft_studio_app::eval::Format = a.format.parse()?;
    let mut targets = Vec::new();
    if !a.no_base {
        targets.push(Target::Base);
    }
    targets.extend(a.adapters.into_iter().map(Target::Adapter));
    targets.extend(a.runs.into_iter().map(Target::Run));
    if targets.is_empty() {
        return Err(EngineError::config(
            "eval",
            "nothing to measure: drop --no-base or add --adapter/--run",
        )
        .into());
    }
    let request = EvalRequest {
        model: a.model,
        targets,
        task,
        data: a.data,
        format,
        max_new_tokens: a.max_new_tokens,
        precision: a.precision,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} {bar:32} {pos}/{len} items  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let results = evaluate(&catalog, &request, &mut |label, done, total| {
        if bar.length() != Some(total as u64) || bar.message() != label {
            bar.set_length(total as u64);
            bar.set_message(label.to_string());
            bar.reset_eta();
        }
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let results = results?;
    if let Some(path) = &a.items_out {
        let mut lines = String::new();
        for r in &results {
            for item in &r.report.per_item {
                lines.push_str(&serde_json::json!({"label": r.label, "item": item}).to_string());
                lines.push('\n');
            }
        }
        std::fs::write(path, lines).map_err(|e| EngineError::bad_file(path, e.to_string()))?;
    }
    let mut stdout = std::io::stdout();
    if a.json {
        for r in &results {
            let line = serde_json::json!({"label": r.label, "evaluation": r.record});
            let _ = writeln!(stdout, "{line}");
        }
        return Ok(());
    }
    let names: Vec<&String> = results
        .first()
        .map(|r| r.record.fields.metrics.keys().collect())
        .unwrap_or_default();
    let _ = write!(stdout, "{:<24}", "target");
    for n in &names {
        let _ = write!(stdout, " {n:>14}");
    }
    let _ = writeln!(stdout, "  items  (catalog id)");
    for r in &results {
        let _ = write!(stdout, "{:<24}", r.label);
        for n in &names {
            let v = r.record.fields.metrics.get(*n).copied().unwrap_or(f64::NAN);
            let _ = write!(stdout, " {v:>14.6}");
        }
        let _ = writeln!(stdout, "  {:>5}  ({})", r.record.fields.items, r.record.id);
    }
    Ok(())
}

fn serve_cmd(a: ServeArgs) -> Result<()> {
    use peft_studio_app::serve::{RequestLine, ServeOptions, Server};
    let adapters = a
        .adapters
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
                Ok((name.to_string(), PathBuf::from(dir)))
            }
            _ => Err(EngineError::config(
                "adapter",
                format!("`{spec}` is not NAME=DIR"),
            )),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let opts = ServeOptions {
        model: a.model,
        adapters,
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        precision: a.precision,
        quantize: a.quantize,
        max_batch: a.max_batch,
        max_waiting: a.max_waiting,
    };
    let print = |l: &RequestLine| {
        eprintln!(
            "{} {} {} prompt={} new={} {} ms{}",
            l.status,
            l.path,
            l.model,
            l.prompt_tokens,
            l.completion_tokens,
            l.ms,
            if l.stream { " (stream)" } else { "" }
        );
    };
    let server = Server::start(&opts, Some(Box::new(print)))?;
    let names: Vec<String> = server
        .registry()
        .models()
        .into_iter()
        .map(|m| m.id)
        .collect();
    // The address on stdout (scripts read it: --port 0 picks a free one).
    println!("serving {} on http://{}", names.join(", "), server.addr());
    if opts.api_key.is_none() && !server.addr().ip().is_loopback() {
        eprintln!("warning: listening beyond this machine without --api-key: anyone who reaches it can use it");
    }
    server.wait();
    Ok(())
}

fn logits_cmd(a: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    write_logits(&a.model, a.adapter.as_deref(), a.quantize, &ids, &a.out)
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    use std::io::Write;
    let mut loaded = Loaded::open(&a.model, a.quantize, a.precision)?;
    let request = GenerateRequest {
        adapter: a.adapter,
        prompt: a.prompt,
        chat: a.chat,
        options: GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let mut stdout = std::io::stdout();
    let mut print = |text: &str| {
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
    };
    let done = loaded.generate(
        &request,
        &mut print,
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    println!();
    if a.timing {
        // Decoding speed: the tokens after the first over the time after it.
        let first = done.first_token_ms.unwrap_or(done.ms);
        let after = done.ms.saturating_sub(first).max(1) as f64 / 1000.0;
        let rss = peak_rss_mb().unwrap_or(0.0);
        eprintln!(
            "prompt_tokens={} new_tokens={} ttft_s={:.4} decode_tokens_per_s={:.2} peak_rss_mb={rss:.1}",
            done.prompt_tokens,
            done.tokens,
            first as f64 / 1000.0,
            done.tokens.saturating_sub(1) as f64 / after,
        );
    }
    Ok(())
}

fn bench_cmd(a: &BenchArgs) -> Result<()> {
    let method = method_with_overrides(&MethodConfig::default(), &a.method.0)?;
    let request = BenchRequest {
        model: a.model.clone(),
        method,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        steps: a.steps,
        gradient_checkpointing: a.gradient_checkpointing,
        precision: a.precision,
        quantize: a.quantize,
    };
    bench(&request, &mut |line| println!("{line}"))
}
