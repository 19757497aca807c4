//! The command line as scripts use it: real files, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};

mod hostile;
mod runs;

thread_local! {
    /// Each test has a catalog of its own, so that runs of tests running side by side do not
    /// queue behind each other.
    static CATALOG: tempfile::TempDir = tempfile::tempdir().expect("tempdir");
}

/// The CLI with this test's catalog.
fn cli_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft-studio-cli"));
    CATALOG.with(|d| cmd.env("PEFT_STUDIO_CATALOG", d.path().join("catalog.sqlite")));
    cmd
}

fn cli(args: &[&str]) -> Output {
    cli_command()
        .args(args)
        .output()
        .expect("run peft-studio-cli")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "command failed:\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    o
}

const LLAMA3_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,"num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":500000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16","vocab_size":128256,"max_position_embeddings":8192}"#;
const LLAMA2_7B: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,
 "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,
 "tie_word_embeddings":false,"model_type":"llama"}"#;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model");
    write_tiny_model(&model, &TinySpec::default()).expect("tiny model");
    let data = dir.path().join("data.jsonl");
    let lines = [
        "{\"text\": \"hello world\"}",
        "{\"prompt\": \"Q: hi\\nA:\", \"completion\": \" hello world\"}",
    ];
    std::fs::write(&data, lines.join("\n")).expect("dataset");
    (dir, model, data)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `train` for one step on `data` into `out`, with extra flags.
fn train_one_step(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--dataset",
        s(data),
        "--out",
        s(out),
        "--max-steps",
        "1",
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn plan_prints_peft_line_for_a_config_or_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, LLAMA2_7B).expect("config");
    let want = "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622";
    for target in [s(&config), s(dir.path())] {
        let o = ok(cli(&[
            "plan",
            "--model",
            target,
            "--method",
            "lora",
            "--r",
            "8",
            "--lora-alpha",
            "16",
            "--target-modules",
            "q_proj,v_proj",
        ]));
        let out = stdout(&o);
        assert_eq!(out.lines().next(), Some(want));
        let memory = out.lines().nth(1).expect("memory line");
        assert!(
            memory.starts_with("estimated peak memory: ") && memory.contains("GiB"),
            "{memory}"
        );
    }
    let o = ok(cli(&[
        "plan",
        "--model",
        s(&config),
        "--method",
        "lora",
        "--r",
        "8",
        "--target-modules",
        "all-linear",
        "--layers-to-transform",
        "0-15",
    ]));
    assert!(
        stdout(&o)
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("trainable params: 9,994,240 ||")),
        "{}",
        stdout(&o)
    );
}

/// `plan` of LoRA r=16 on every linear layer, bf16, 1 × `seq_len` tokens, with `extra` flags.
fn plan_lora16_all_bf16(config: &Path, seq_len: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "plan",
        "--model",
        s(config),
        "--r",
        "16",
        "--target-modules",
        "all-linear",
        "--seq-len",
        seq_len,
        "--batch-size",
        "1",
        "--precision",
        "bf16",
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `plan --quantize q4_k` counts a Llama-3-8B's projections at 4.5 bits (embeddings and head
/// in bf16, as QLoRA keeps them) and says whether the run fits this machine.
#[test]
fn plan_counts_a_quantized_base_and_says_whether_it_fits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, LLAMA3_8B).expect("config");
    let args = |quantize: &[&str]| stdout(&ok(plan_lora16_all_bf16(&config, "512", quantize)));
    let out = args(&["--gradient-checkpointing", "--quantize", "q4_k"]);
    let lines: Vec<&str> = out.lines().collect();
    // 6,979,321,856 projection weights × 144/256 bytes + embeddings and head in bf16 + norms
    // + 41.9M adapter weights in f32 = 6,195,519,488 bytes.
    assert!(lines[1].contains("weights 5.77 GiB"), "{out}");
    assert!(lines[1].ends_with("projections in Q4_K"), "{out}");
    assert!(
        lines[2].starts_with("fits this machine: ")
            || lines[2].starts_with("does not fit this machine: "),
        "{out}"
    );
    let dense = args(&["--gradient-checkpointing"]);
    assert!(
        dense
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("weights 15.11 GiB")),
        "{dense}"
    );
    let bad = cli(&["plan", "--model", s(&config), "--quantize", "q3_x"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("q4_k"));
}

/// `plan --device cuda` answers for a GPU this machine need not have: GPU memory apart from
/// the host's, and which common GPU sizes hold the run (Llama-2-7B, LoRA r=16 on every
/// linear layer, bf16, 1 × 2,048 tokens without checkpointing: 24 GB only with it).
#[test]
fn plan_for_a_gpu_says_what_fits_and_what_to_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, LLAMA2_7B).expect("config");
    let o = ok(plan_lora16_all_bf16(&config, "2048", &["--device", "cuda"]));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].starts_with("estimated peak GPU memory: "), "{out}");
    assert!(lines[1].contains("host memory"), "{out}");
    assert_eq!(
        lines.get(2).copied(),
        Some("on a GPU of 24 GB: does not fit; fits with gradient checkpointing; 48 GB: fits; 80 GB: fits"),
        "{out}"
    );
}

/// Eight greedy tokens after "hello", with or without an adapter.
fn greedy(model: &Path, adapter: Option<&Path>) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    ok(cli(&args))
}

#[test]
fn train_export_generate_with_flags() {
    let (dir, model, data) = setup();
    let out = dir.path().join("run");
    let o = ok(cli(&[
        "train",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--method",
        "lora",
        "--r",
        "4",
        "--lora-alpha",
        "8",
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj",
        "--lr",
        "1e-2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--max-steps",
        "6",
        "--seed",
        "1",
        "--out",
        s(&out),
        "--json",
    ]));
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let steps: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 6);
    for key in [
        "step",
        "epoch",
        "tokens_seen",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "elapsed_s",
    ] {
        assert!(steps[0].get(key).is_some(), "step event lacks {key}");
    }
    assert!(events.iter().any(|e| e["event"] == "finished"));
    let end = events.last().expect("events");
    assert_eq!(
        (&end["event"], &end["status"]),
        (
            &serde_json::json!("status"),
            &serde_json::json!("completed")
        )
    );
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    // The catalog has the run, its metrics and its adapter.
    let run_id = events[0]["run"]
        .as_i64()
        .expect("the worker names its run first");
    let shown: serde_json::Value = serde_json::from_str(&stdout(&ok(cli(&[
        "runs",
        "show",
        &run_id.to_string(),
        "--json",
    ]))))
    .expect("json");
    assert_eq!(shown["run"]["status"], "completed");
    assert_eq!(shown["run"]["last_step"], 6);
    assert_eq!(shown["run"]["total_steps"], 6);
    assert_eq!(shown["adapters"].as_array().map(Vec::len), Some(1));

    let exported = dir.path().join("exported");
    ok(cli(&[
        "export",
        "--run",
        &run_id.to_string(),
        "--format",
        "peft",
        "--out",
        s(&exported),
    ]));
    let a = std::fs::read(out.join("adapter/adapter_model.safetensors")).expect("a");
    let b = std::fs::read(exported.join("adapter_model.safetensors")).expect("b");
    assert_eq!(
        a, b,
        "exporting the last checkpoint gives the run's adapter"
    );

    let base = greedy(&model, None);
    let tuned = greedy(&model, Some(&exported));
    // The merged model (a Hugging Face folder) generates what base + adapter generates.
    let merged = dir.path().join("merged");
    ok(cli(&[
        "export",
        "--run",
        &run_id.to_string(),
        "--format",
        "merged",
        "--out",
        s(&merged),
    ]));
    assert!(merged.join("model.safetensors").is_file() && merged.join("tokenizer.json").is_file());
    assert_eq!(stdout(&greedy(&merged, None)), stdout(&tuned));
    assert_ne!(
        stdout(&base),
        stdout(&tuned),
        "the adapter changes greedy output"
    );
    ok(cli(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "4",
        "--chat",
    ]));
}

#[test]
fn train_from_config_file_then_resume() {
    let (dir, model, data) = setup();
    let config = dir.path().join("run.toml");
    let text = format!(
        "model = {:?}\ndataset = {:?}\nout = \"runs/demo\"\n\n[method]\nkind = \"lora\"\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\n[train]\nlr = 0.01\nbatch_size = 1\nmax_steps = 3\ncheckpoint_every = 1\n",
        s(&model), s(&data)
    );
    std::fs::write(&config, text).expect("config");
    // A flag overrides the file.
    let o = ok(cli(&[
        "train",
        "--config",
        s(&config),
        "--max-steps",
        "2",
        "--json",
    ]));
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .count(),
        2
    );
    let run = dir.path().join("runs/demo");
    assert!(
        run.join("run.toml").is_file(),
        "relative `out` resolves next to the config file"
    );
    // Train the finished run further: resume it (by folder) with a larger step budget.
    let o = ok(cli(&["resume", s(&run), "--max-steps", "4", "--json"]));
    let steps: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| l.contains("\"event\":\"step\""))
        .map(str::to_string)
        .collect();
    assert_eq!(steps.len(), 2);
    assert!(steps[0].contains("\"step\":3"), "{}", steps[0]);

    // Switching the method on the command line drops the file's LoRA targets: IA3 then
    // uses its own defaults (k_proj, v_proj, down_proj) instead of failing on them.
    let lora_qv = dir.path().join("qv.toml");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("\"all-linear\"", "[\"q_proj\", \"v_proj\"]");
    std::fs::write(&lora_qv, text).expect("config");
    let o = ok(cli(&[
        "train",
        "--config",
        s(&lora_qv),
        "--method",
        "ia3",
        "--max-steps",
        "1",
        "--out",
        s(&dir.path().join("ia3")),
    ]));
    let adapter = std::fs::read_to_string(dir.path().join("ia3/adapter/adapter_config.json"))
        .expect("adapter config");
    assert!(
        adapter.contains("\"IA3\"") && adapter.contains("down_proj"),
        "{adapter}\n{}",
        stderr(&o)
    );
}

#[test]
fn bad_input_exits_with_a_clear_message() {
    let (dir, model, data) = setup();
    let missing = cli(&["plan", "--model", s(&dir.path().join("nope"))]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("error:") && stderr(&missing).contains("nope"),
        "{}",
        stderr(&missing)
    );

    let bad_target = cli(&["plan", "--model", s(&model), "--target-modules", "c_attn"]);
    assert!(!bad_target.status.success());
    assert!(
        stderr(&bad_target).contains("q_proj"),
        "{}",
        stderr(&bad_target)
    );

    let bad_line = dir.path().join("bad.jsonl");
    std::fs::write(&bad_line, "{\"text\": \"fine\"}\n{oops}\n").expect("write");
    let o = train_one_step(&model, &bad_line, &dir.path().join("r"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.jsonl:2:"), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("error:").count(),
        1,
        "the failure is told once (by the parent, not again by the worker): {}",
        stderr(&o)
    );

    let o = cli(&[
        "train",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--out",
        s(&dir.path().join("r0")),
        "--r",
        "0",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("rank"),
        "{}",
        stderr(&o)
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        format!(
            "model = {:?}\ndataset = {:?}\nout = \"x\"\n[train]\nlearning_rate = 1e-4\n",
            s(&model),
            s(&data)
        ),
    )
    .expect("w");
    let o = cli(&["train", "--config", s(&typo)]);
    assert!(
        !o.status.success() && stderr(&o).contains("learning_rate"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_prints_throughput_and_memory() {
    let (_dir, model, _) = setup();
    let o = ok(cli(&[
        "bench",
        "--model",
        s(&model),
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--steps",
        "2",
    ]));
    let text = stdout(&o);
    for key in [
        "tokens_per_s=",
        "peak_rss_mb=",
        "forward_s=",
        "backward_s=",
        "optimizer_s=",
    ] {
        assert!(text.contains(key), "{text}");
    }
}

#[test]
fn ctrl_c_stops_with_a_checkpoint_that_resume_continues() {
    use std::io::BufRead;
    let (dir, model, data) = setup();
    let out = dir.path().join("run");
    let mut child = cli_command()
        .args([
            "train",
            "--model",
            s(&model),
            "--dataset",
            s(&data),
            "--out",
            s(&out),
            "--max-steps",
            "100000",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Wait for the first finished step, then interrupt as a terminal would.
    for line in lines.by_ref() {
        if line.expect("line").contains("\"event\":\"step\"") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.expect("line")).collect();
    let done = child.wait_with_output().expect("wait");
    assert!(
        !done.status.success(),
        "an interrupted run does not report success"
    );
    assert!(stderr(&done).contains("resume"), "{}", stderr(&done));
    assert!(
        rest.iter().any(|l| l.contains("\"event\":\"checkpoint\"")),
        "a checkpoint is written on the way out"
    );
    let finished = rest
        .iter()
        .find(|l| l.contains("\"event\":\"finished\""))
        .expect("finished event");
    assert!(finished.contains("\"cancelled\":true"), "{finished}");
    let checkpoints = std::fs::read_dir(out.join("checkpoints"))
        .expect("checkpoints")
        .count();
    assert_eq!(checkpoints, 1);
}

#[test]
fn data_check_lists_problems_and_preview_marks_trained_text() {
    let (dir, model, _) = setup();
    let data = dir.path().join("chat.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [{\"role\": \"user\"}]}\n",
    )
    .unwrap();
    let check = cli(&["data", "check", s(&data), "--model", s(&model)]);
    assert!(!check.status.success(), "a rejected record fails the check");
    let out = stdout(&check);
    assert!(
        out.contains(&format!(
            "{}:2: messages[0] has no string \"content\"",
            data.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("messages format, 1 usable, 1 rejected (1 missing field)"),
        "{out}"
    );

    let preview = ok(cli(&["data", "preview", s(&data), "--model", s(&model)]));
    let out = stdout(&preview);
    assert!(out.contains("<|user|>hi\n<|assistant|>⟦yo\n⟧"), "{out}");
    assert!(out.contains("per record min"), "{out}");

    // Training skips the bad record only when asked, and says which it skipped.
    let refused = train_one_step(&model, &data, &dir.path().join("r1"), &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("on_bad_records"),
        "{}",
        stderr(&refused)
    );
    let trained = ok(train_one_step(
        &model,
        &data,
        &dir.path().join("r2"),
        &["--skip-bad-records", "--target-modules", "q_proj"],
    ));
    assert!(
        stderr(&trained).contains("skipped") && stderr(&trained).contains(":2: messages[0]"),
        "{}",
        stderr(&trained)
    );
}

/// `logits` writes [tokens, vocab] f32 for the ids, changed by an adapter; bad ids are named.
#[test]
fn logits_for_ids_with_and_without_an_adapter() {
    let (dir, model, data) = setup();
    let out = dir.path().join("run");
    ok(train_one_step(&model, &data, &out, &[]));
    let read = |p: &Path| {
        let bytes = std::fs::read(p).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor("logits").expect("logits");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        (t.shape().to_vec(), t.data().to_vec())
    };
    let base = dir.path().join("base.safetensors");
    ok(cli(&[
        "logits",
        "--model",
        s(&model),
        "--ids",
        "1,2,3",
        "--out",
        s(&base),
    ]));
    let tuned = dir.path().join("tuned.safetensors");
    let adapter = out.join("adapter");
    ok(cli(&[
        "logits",
        "--model",
        s(&model),
        "--adapter",
        s(&adapter),
        "--ids",
        "1,2,3",
        "--out",
        s(&tuned),
    ]));
    let ((shape, b), (_, t)) = (read(&base), read(&tuned));
    assert_eq!(shape[0], 3);
    assert_ne!(b, t, "the adapter changes the logits");
    let o = cli(&[
        "logits",
        "--model",
        s(&model),
        "--ids",
        "1,x",
        "--out",
        s(&base),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ids") && stderr(&o).contains("`x`"),
        "{}",
        stderr(&o)
    );
}

/// From the terminal: a model converted to GGUF (`models to-gguf`), a run's LoRA exported as a
/// GGUF LoRA and imported back against its base (`adapters import --model`), computing the
/// run's logits exactly; existing files and unknown types refused by name.
#[test]
fn gguf_files_out_and_gguf_loras_back_in() {
    let (dir, model, data) = setup();
    let home = dir.path().join("home");
    let cli_home = |args: &[&str]| {
        cli_command()
            .env("PEFT_STUDIO_HOME", &home)
            .args(args)
            .output()
            .expect("run peft-studio-cli")
    };
    let out = dir.path().join("run");
    ok(train_one_step(
        &model,
        &data,
        &out,
        &["--target-modules", "q_proj,k_proj,v_proj"],
    ));
    let lora = dir.path().join("lora.gguf");
    ok(cli(&[
        "export",
        "--run",
        s(&out),
        "--format",
        "gguf-lora",
        "--out",
        s(&lora),
    ]));
    let o = ok(cli_home(&[
        "adapters",
        "import",
        s(&lora),
        "--model",
        s(&model),
    ]));
    let imported = home.join("adapters/lora");
    assert!(stdout(&o).contains(s(&imported)), "{}", stdout(&o));
    let listed = stdout(&ok(cli_home(&["adapters", "list"])));
    assert!(
        listed.contains("lora") && listed.contains(s(&imported)),
        "{listed}"
    );
    let logits = |adapter: &Path, name: &str| {
        let file = dir.path().join(name);
        ok(cli(&[
            "logits",
            "--model",
            s(&model),
            "--adapter",
            s(adapter),
            "--ids",
            "1,2,3",
            "--out",
            s(&file),
        ]));
        std::fs::read(file).expect("logits")
    };
    assert_eq!(
        logits(&out.join("adapter"), "a.st"),
        logits(&imported, "b.st")
    );

    let gguf = dir.path().join("model.gguf");
    ok(cli_home(&[
        "models",
        "to-gguf",
        s(&model),
        "--out",
        s(&gguf),
        "--type",
        "q8_0",
    ]));
    assert_eq!(&std::fs::read(&gguf).expect("gguf")[..4], b"GGUF");
    let again = cli_home(&["models", "to-gguf", s(&model), "--out", s(&gguf)]);
    assert!(
        !again.status.success() && stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad = cli_home(&[
        "models",
        "to-gguf",
        s(&model),
        "--out",
        s(&dir.path().join("x.gguf")),
        "--type",
        "q3",
    ]);
    assert!(
        stderr(&bad).contains("gguf type") && stderr(&bad).contains("q8_0"),
        "{}",
        stderr(&bad)
    );
}

/// `generate` with a T5 checkpoint (tiny, made by transformers, with a tokenizer in T5's
/// layout): the source is encoded once and the decoder continues it greedily; the text equals
/// what transformers' `generate` decodes for the same prompt ("jtz", then EOS). Chat and
/// adapters are refused by name for T5.
#[test]
fn generate_with_a_t5_model() {
    let model = t5_fixture();
    let args = [
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "the cat is here.",
        "--max-new-tokens",
        "6",
    ];
    let o = ok(cli(&args));
    assert_eq!(stdout(&o).trim(), "jtz", "{}", stderr(&o));
    // With --timing the same text, and its figures on stderr for bench/generate.
    let o = ok(cli(&[&args[..], &["--timing"]].concat()));
    assert_eq!(stdout(&o).trim(), "jtz");
    let timing = stderr(&o);
    for key in [
        "prompt_tokens=",
        "new_tokens=3 ",
        "ttft_s=",
        "decode_tokens_per_s=",
        "peak_rss_mb=",
    ] {
        assert!(timing.contains(key), "{key} in {timing}");
    }
    // Held in bf16 it still generates (its greedy text may differ by bf16's rounding).
    let o = ok(cli(&[&args[..], &["--precision", "bf16"]].concat()));
    assert!(!stdout(&o).trim().is_empty(), "{}", stderr(&o));
    let o = cli(&[&args[..], &["--chat"]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("no chat template"),
        "{}",
        stderr(&o)
    );
    // In the library under a name, described as a T5, and generated with by that name.
    let home = tempfile::tempdir().expect("home");
    let with_home = |args: &[&str]| {
        cli_command()
            .env("PEFT_STUDIO_HOME", home.path())
            .args(args)
            .output()
            .expect("run")
    };
    ok(with_home(&[
        "models",
        "import",
        s(&model),
        "--name",
        "t5-tiny",
    ]));
    let listed = stdout(&ok(with_home(&["models", "list"])));
    assert!(
        listed.contains("t5-tiny") && listed.contains("T5"),
        "{listed}"
    );
    let named = ok(with_home(&[
        "generate",
        "--model",
        "t5-tiny",
        "--prompt",
        "the cat is here.",
        "--max-new-tokens",
        "6",
    ]));
    assert_eq!(stdout(&named).trim(), "jtz");
    // Plain text has no source and target: refused by name, line and reason.
    let data = home.path().join("text.jsonl");
    std::fs::write(&data, "{\"text\": \"a\"}\n").expect("data");
    let o = with_home(&["train", "--model", "t5-tiny", "--dataset", s(&data)]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("text.jsonl:1")
            && err.contains("a source and a target"),
        "{err}"
    );
}

/// Training LoRA on a T5 with `train`: prompt/completion records become sources and targets,
/// the loss falls, and the adapter is PEFT's sequence-to-sequence LoRA (task type, module
/// names, T5's default targets written out).
#[test]
fn train_lora_on_a_t5_model() {
    let model = t5_fixture();
    let dir = tempfile::tempdir().expect("dir");
    let pairs = [
        ("the cat", "is here."),
        ("a dog", "is there."),
        ("the sun", "is hot."),
        ("a cup", "is full."),
    ];
    let data = pairs_file(&dir.path().join("pairs.jsonl"), &[pairs; 4].concat());
    let out = dir.path().join("run");
    let o = ok(cli(&[
        "train",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--out",
        s(&out),
        "--json",
        "--lr",
        "2e-2",
        "--max-steps",
        "12",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
    ]));
    let losses = step_losses(&o);
    assert!(losses.len() == 12, "{losses:?}");
    assert!(
        losses[11] < 0.8 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!(config["target_modules"], serde_json::json!(["q", "v"]));
    let weights = std::fs::read(out.join("adapter/adapter_model.safetensors")).expect("weights");
    let names = safetensors::SafeTensors::deserialize(&weights)
        .expect("st")
        .names()
        .len();
    // q and v of 2 encoder self-attentions, 3 decoder self- and 3 cross-attentions: 16 × A, B.
    assert_eq!(names, 32);
    // `plan` prints PEFT's line for T5's default LoRA (PEFT 0.21 on this checkpoint).
    let o = ok(cli(&["plan", "--model", s(&model)]));
    let plan = stdout(&o);
    assert_eq!(
        plan.lines().next(),
        Some("trainable params: 8,192 || all params: 68,640 || trainable%: 11.9347"),
        "{plan}"
    );
    // …and a predicted peak (memory.rs's T5 count).
    assert!(
        plan.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("estimated peak memory")),
        "{plan}"
    );
    // The adapter exports, and the merged model: its logits alone are the base's with the
    // adapter (LoRA folded into q and v), a GGUF file is refused by name.
    let peft = dir.path().join("peft");
    ok(cli(&["export", "--run", s(&out), "--out", s(&peft)]));
    let merged = dir.path().join("merged");
    ok(cli(&[
        "export",
        "--run",
        s(&out),
        "--format",
        "merged",
        "--out",
        s(&merged),
    ]));
    let logits = |model: &Path, adapter: Option<&Path>, file: &str| {
        let out = dir.path().join(file);
        let mut args = vec![
            "logits",
            "--model",
            s(model),
            "--ids",
            "5,9,33,2",
            "--out",
            s(&out),
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", s(a)]);
        }
        ok(cli(&args));
        let bytes = std::fs::read(&out).expect("logits");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("st");
        let t = st.tensor("logits").expect("logits");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<f32>>()
    };
    let (adapted, folded) = (
        logits(&model, Some(&peft), "adapted.st"),
        logits(&merged, None, "merged.st"),
    );
    let base = logits(&model, None, "base.st");
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        diff(&adapted, &folded) < 1e-4,
        "merged differs by {}",
        diff(&adapted, &folded)
    );
    assert!(diff(&adapted, &base) > 1e-3, "the adapter moved nothing");
    let o = cli(&[
        "export",
        "--run",
        s(&out),
        "--format",
        "gguf-f32",
        "--out",
        s(&dir.path().join("m.gguf")),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("T5 run"),
        "{}",
        stderr(&o)
    );
    // The preview shows each source, then its target marked as trained.
    let o = ok(cli(&[
        "data",
        "preview",
        s(&data),
        "--model",
        s(&model),
        "--n",
        "1",
    ]));
    let preview = stdout(&o);
    assert!(preview.contains("the cat</s>\n⟦is here.</s>⟧"), "{preview}");
}

/// The tiny T5 learns to copy its source with LoRA (all-linear, r=8, 300 steps): the loss ends
/// near zero and the playground's greedy decoding with the adapter writes the source back.
#[test]
fn a_tiny_t5_learns_to_copy_with_lora() {
    let model = t5_fixture();
    let dir = tempfile::tempdir().expect("dir");
    let words = [
        "the cat", "a dog", "the sun", "a cup", "big red", "is hot", "old map", "fun day",
    ];
    let copies: Vec<(&str, &str)> = words.iter().map(|w| (*w, *w)).collect();
    let data = pairs_file(&dir.path().join("copy.jsonl"), &copies);
    let out = dir.path().join("run");
    let o = ok(cli(&[
        "train",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--out",
        s(&out),
        "--json",
        "--target-modules",
        "all-linear",
        "--r",
        "8",
        "--lr",
        "1e-2",
        "--max-steps",
        "300",
        "--batch-size",
        "8",
    ]));
    let last = *step_losses(&o).last().expect("losses");
    assert!(last < 1e-2, "final loss {last}");
    for w in ["the cat", "old map"] {
        let adapter = out.join("adapter");
        let o = ok(cli(&[
            "generate",
            "--model",
            s(&model),
            "--adapter",
            s(&adapter),
            "--prompt",
            w,
            "--max-new-tokens",
            "8",
        ]));
        assert_eq!(stdout(&o).trim(), w);
    }
}

/// The engine's tiny T5 v1.1 checkpoint (made by transformers, with a T5-layout tokenizer).
fn t5_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/reference/t5/v1_1")
}

/// A JSONL file of prompt/completion records at `path`.
fn pairs_file(path: &Path, pairs: &[(&str, &str)]) -> PathBuf {
    let lines: String = pairs
        .iter()
        .map(|(p, c)| format!("{{\"prompt\": \"{p}\", \"completion\": \"{c}\"}}\n"))
        .collect();
    std::fs::write(path, lines).expect("pairs");
    path.to_path_buf()
}

/// The training losses a `train --json` printed, step by step.
fn step_losses(o: &Output) -> Vec<f64> {
    stdout(o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}
