//! The hostile-input corpus: files a stranger might share (datasets, model folders, GGUF files,
//! adapters) and settings a user might mistype (run configs, export paths), each sent through
//! the entry point that reads it. Every one must end in a clear `error: …` naming the file or
//! field (exit status 1: never a panic's 101 or a signal), leave no file behind in the folders
//! it was pointed at, and leave the catalog as it was. The tally is printed at the end:
//!   hostile inputs=<n> errors_correct=<k> panics=<p> files_left=<f> runs_lost=<l>

use std::path::{Path, PathBuf};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};

use super::{cli_command, s, setup, stderr};

/// One hostile input: a name, the command line, and what the error must mention.
struct Case {
    name: &'static str,
    args: Vec<String>,
    mentions: Vec<String>,
}

fn case(name: &'static str, args: &[&str], mentions: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        mentions: mentions.iter().map(|m| m.to_string()).collect(),
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> PathBuf {
    std::fs::write(path, bytes).expect("write corpus file");
    path.to_path_buf()
}

/// Every file under `dir` (recursively), for before/after comparisons.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A copy of the tiny model folder with `edit` applied to it.
fn broken_model(root: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = root.join(name);
    write_tiny_model(&dir, &TinySpec::default()).expect("tiny model");
    edit(&dir);
    s(&dir).to_string()
}

/// A GGUF header: magic, version 3, the counts given, then `rest`.
fn gguf(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn hostile_inputs_get_clear_errors_and_change_nothing() {
    let (dir, model, data) = setup();
    let root = dir.path().join("corpus");
    std::fs::create_dir_all(&root).expect("corpus dir");
    let home = dir.path().join("home");
    let outs = dir.path().join("outs");
    std::fs::create_dir_all(&outs).expect("outs");
    let m = s(&model).to_string();
    let d = s(&data).to_string();
    let out = |n: &str| s(&outs.join(n)).to_string();
    let f = |n: &str| root.join(n);

    // A finished run to export from, and an adapter to corrupt copies of.
    let run = dir.path().join("run");
    let o = super::train_one_step(&model, &data, &run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = run.join("adapter");

    // Datasets.
    let bad_json = write(
        &f("bad.jsonl"),
        "{\"text\": \"ok\"}\n{\"text\": \"unterminated\n",
    );
    let wrong_type = write(
        &f("types.jsonl"),
        "{\"text\": 5}\n{\"prompt\": [1], \"completion\": null}\n",
    );
    let bom_only = write(&f("bom.jsonl"), b"\xEF\xBB\xBF");
    let bad_utf8 = write(&f("utf8.jsonl"), b"{\"text\": \"\xff\xfe broken\"}\n");
    let empty = write(&f("empty.jsonl"), "");
    let csv = write(
        &f("quotes.csv"),
        "prompt,completion\n\"open quote,never closed\n",
    );
    let mut huge = b"{\"text\": \"".to_vec();
    huge.resize(100 << 20, b'a');
    let huge = write(&f("huge-line.jsonl"), huge);
    let mut cases = Vec::new();
    for (name, file, mention) in [
        ("dataset: malformed JSON line", &bad_json, "bad.jsonl:2"),
        ("dataset: wrong field types", &wrong_type, "types.jsonl:1"),
        ("dataset: a BOM and nothing else", &bom_only, "bom.jsonl"),
        ("dataset: invalid UTF-8", &bad_utf8, "utf8.jsonl:1"),
        ("dataset: empty file", &empty, "empty.jsonl"),
        ("dataset: broken CSV quoting", &csv, "quotes.csv"),
        ("dataset: a 100 MB line", &huge, "huge-line.jsonl:1"),
    ] {
        cases.push(case(name, &["data", "check", s(file)], &[mention]));
        cases.push(case(
            name,
            &[
                "train",
                "--model",
                &m,
                "--dataset",
                s(file),
                "--out",
                &out(name),
            ],
            &[mention],
        ));
    }

    // Model folders.
    let no_config = broken_model(&root, "no-config", |p| {
        std::fs::remove_file(p.join("config.json")).expect("rm")
    });
    let bad_header = broken_model(&root, "bad-header", |p| {
        write(&p.join("model.safetensors"), [0xff; 64]);
    });
    let truncated = broken_model(&root, "truncated", |p| {
        let w = p.join("model.safetensors");
        let bytes = std::fs::read(&w).expect("read");
        write(&w, &bytes[..bytes.len() / 2]);
    });
    let absurd = broken_model(&root, "absurd", |p| {
        let c = p.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&c).expect("read")).expect("json");
        cfg["hidden_size"] = serde_json::json!(1u64 << 40);
        cfg["num_hidden_layers"] = serde_json::json!(1u64 << 30);
        write(&c, cfg.to_string());
    });
    let gpt2 = broken_model(&root, "gpt2", |p| {
        let c = p.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&c).expect("read")).expect("json");
        cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        cfg["model_type"] = serde_json::json!("gpt2");
        write(&c, cfg.to_string());
    });
    let no_tokenizer = broken_model(&root, "no-tokenizer", |p| {
        std::fs::remove_file(p.join("tokenizer.json")).expect("rm")
    });
    for (name, folder, mention) in [
        ("model: no config.json", &no_config, "config.json"),
        (
            "model: corrupt safetensors header",
            &bad_header,
            "model.safetensors",
        ),
        ("model: truncated weights", &truncated, "model.safetensors"),
        ("model: absurd sizes in config.json", &absurd, "hidden_size"),
        ("model: unsupported architecture", &gpt2, "GPT2LMHeadModel"),
        ("model: no tokenizer", &no_tokenizer, "tokenizer.json"),
    ] {
        cases.push(case(
            name,
            &[
                "train",
                "--model",
                folder,
                "--dataset",
                &d,
                "--out",
                &out(name),
            ],
            &[mention],
        ));
        cases.push(case(
            name,
            &["models", "import", folder, "--name", "hostile"],
            &[mention],
        ));
    }

    // GGUF files.
    let magic = write(&f("magic.gguf"), b"GGML\x03\x00\x00\x00");
    let cut = write(&f("cut.gguf"), &gguf(1, 1, b"\x05\x00")[..18]);
    let many_tensors = write(&f("many-tensors.gguf"), gguf(u64::MAX / 2, 0, &[]));
    let mut long_key = gguf(0, 1, &(u64::MAX / 4).to_le_bytes());
    long_key.extend_from_slice(b"abc");
    let long_string = write(&f("long-string.gguf"), long_key);
    let mut long_array = gguf(0, 1, &3u64.to_le_bytes());
    long_array.extend_from_slice(b"key");
    long_array.extend(9u32.to_le_bytes()); // array
    long_array.extend(8u32.to_le_bytes()); // of strings
    long_array.extend((u64::MAX / 8).to_le_bytes());
    let long_array = write(&f("long-array.gguf"), long_array);
    for (name, file) in [
        ("gguf: wrong magic", &magic),
        ("gguf: truncated", &cut),
        ("gguf: 2^63 tensors claimed", &many_tensors),
        ("gguf: a 2^62-byte string claimed", &long_string),
        ("gguf: a 2^61-element array claimed", &long_array),
    ] {
        let file_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        cases.push(case(
            name,
            &["models", "import", s(file), "--name", "hostile"],
            &[file_name],
        ));
        cases.push(case(
            name,
            &["adapters", "import", s(file), "--model", &m],
            &[file_name],
        ));
    }

    // Adapters to import.
    let copy_adapter = |name: &str, edit: &dyn Fn(&Path)| {
        let to = root.join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for entry in std::fs::read_dir(&adapter).expect("adapter").flatten() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
        edit(&to);
        s(&to).to_string()
    };
    let wide = root.join("wide-model");
    write_tiny_model(
        &wide,
        &TinySpec {
            hidden_size: 64,
            ..TinySpec::default()
        },
    )
    .expect("wide");
    let other_base = s(&wide).to_string();
    let plain = copy_adapter("plain-adapter", &|_| {});
    let weights = "adapter_model.safetensors";
    let nan = copy_adapter("nan-adapter", &|p| {
        let w = p.join(weights);
        let mut bytes = std::fs::read(&w).expect("read");
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        write(&w, bytes);
    });
    let oversized = copy_adapter("oversized-header", &|p| {
        let mut bytes = (200u64 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        write(&p.join(weights), bytes);
    });
    let wrong_shape = copy_adapter("wrong-shape", &|p| {
        let cfg = p.join("adapter_config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).expect("read")).expect("json");
        c["r"] = serde_json::json!(64);
        write(&cfg, c.to_string());
        let t =
            candle_core::Tensor::zeros((3, 7), candle_core::DType::F32, &candle_core::Device::Cpu)
                .expect("t");
        let bytes = peft_studio_engine::fsutil::safetensors_bytes(
            &[
                (
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
                    t.clone(),
                ),
                (
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".into(),
                    t,
                ),
            ],
            None,
        )
        .expect("bytes");
        write(&p.join(weights), bytes);
    });
    let pickle = copy_adapter("pickle", &|p| {
        std::fs::remove_file(p.join(weights)).expect("rm");
        write(&p.join("adapter_model.bin"), b"\x80\x02cos\nsystem\n.");
    });
    for (name, folder, base, mention) in [
        (
            "adapter: for another base model",
            &plain,
            &other_base,
            "another base model",
        ),
        ("adapter: NaN weights", &nan, &m, "NaN"),
        ("adapter: oversized header", &oversized, &m, weights),
        ("adapter: wrong shapes", &wrong_shape, &m, "q_proj"),
        ("adapter: pickled .bin", &pickle, &m, "pickled"),
    ] {
        cases.push(case(
            name,
            &["adapters", "import", folder, "--model", base],
            &[mention],
        ));
    }
    cases.push(case(
        "adapter on generate: for another base model",
        &[
            "generate",
            "--model",
            &other_base,
            "--adapter",
            &plain,
            "--prompt",
            "hi",
        ],
        &["another base model"],
    ));
    // Devices: a name that is not one, and a GPU this build cannot open (the test build
    // has neither CUDA nor Metal), refused before any model is read.
    for (name, device, mention) in [
        ("device: not a device", "tpu", "is not a device"),
        ("device: no CUDA in this build", "cuda", "no CUDA support"),
        (
            "device: no Metal in this build",
            "metal:1",
            "no Metal support",
        ),
    ] {
        cases.push(case(
            name,
            &[
                "--device",
                device,
                "generate",
                "--model",
                &other_base,
                "--prompt",
                "hi",
            ],
            &[mention],
        ));
    }

    // Run configs.
    for (name, flags, mention) in [
        ("config: negative learning rate", vec!["--lr=-1e-3"], "lr"),
        ("config: NaN learning rate", vec!["--lr", "NaN"], "lr"),
        ("config: rank 0", vec!["--r", "0"], "rank"),
        (
            "config: unknown target module",
            vec!["--target-modules", "c_attn"],
            "c_attn",
        ),
        (
            "config: batch size 0",
            vec!["--batch-size", "0"],
            "batch_size",
        ),
        (
            "config: sequence length 0",
            vec!["--seq-len", "0"],
            "seq_len",
        ),
    ] {
        let mut args = vec!["train", "--model", &m, "--dataset", &d];
        let o = out(name);
        args.extend(["--out", &o]);
        args.extend(flags);
        cases.push(case(name, &args, &[mention]));
    }
    let toml = write(
        &f("bad.toml"),
        format!("model = {m:?}\ndataset = {d:?}\nout = \"x\"\n[method]\nr = -4\n"),
    );
    cases.push(case(
        "config: negative rank in TOML",
        &["train", "--config", s(&toml)],
        &["bad.toml", "r"],
    ));
    let toml = write(
        &f("nan.toml"),
        format!("model = {m:?}\ndataset = {d:?}\nout = \"x\"\n[train]\nlr = nan\n"),
    );
    cases.push(case(
        "config: NaN learning rate in TOML",
        &["train", "--config", s(&toml)],
        &["lr"],
    ));

    // Export destinations.
    let existing = write(&outs.join("taken.gguf"), b"mine");
    let full = outs.join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    write(&full.join("keep.txt"), b"mine");
    let r = s(&run).to_string();
    for (name, format, dest, mention) in [
        (
            "export: over an existing file",
            "gguf-lora",
            s(&existing).to_string(),
            "already exists",
        ),
        (
            "export: into a folder with files",
            "peft",
            s(&full).to_string(),
            "already exists",
        ),
        (
            "export: GGUF to a folder",
            "gguf-f16",
            s(&outs).to_string(),
            "already exists",
        ),
        ("export: unknown format", "onnx", out("x"), "onnx"),
    ] {
        cases.push(case(
            name,
            &["export", "--run", &r, "--format", format, "--out", &dest],
            &[mention],
        ));
    }

    // Run every case; compare what is on disk and in the catalog before and after.
    let runs_listing = || {
        let o = cli_command()
            .env("PEFT_STUDIO_HOME", &home)
            .args(["runs", "list"])
            .output()
            .expect("runs list");
        // Ids and statuses: the listing's ages move with the clock.
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut runs_before = runs_listing();
    let mut runs_lost = 0;
    let mut failures = Vec::new();
    let (mut panics, mut files_left, mut correct) = (0, 0, 0);
    for c in &cases {
        let watched: Vec<PathBuf> = [
            outs.clone(),
            root.clone(),
            home.join("models"),
            home.join("adapters"),
        ]
        .to_vec();
        let before: Vec<Vec<PathBuf>> = watched.iter().map(|w| files_under(w)).collect();
        let o = cli_command()
            .env("PEFT_STUDIO_HOME", &home)
            .args(&c.args)
            .output()
            .expect("run");
        // `data check` lists the problems on stdout, the verdict on stderr.
        let err = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
        let code = o.status.code();
        if code == Some(101) || code.is_none() || err.contains("panicked") {
            panics += 1;
        }
        let after: Vec<Vec<PathBuf>> = watched.iter().map(|w| files_under(w)).collect();
        let left: Vec<&PathBuf> = after
            .iter()
            .flatten()
            .filter(|p| !before.iter().flatten().any(|b| b == *p))
            .collect();
        files_left += left.len();
        let named = c.mentions.iter().all(|m| err.contains(m.as_str()));
        let runs_now = runs_listing();
        let catalog_same = runs_now == runs_before;
        if !catalog_same {
            runs_lost += 1;
            runs_before = runs_now;
        }
        if code == Some(1) && err.contains("error: ") && named && left.is_empty() && catalog_same {
            correct += 1;
        } else {
            failures.push(format!(
                "{}: exit {code:?}, left {left:?}\n  {}",
                c.name,
                err.trim()
            ));
        }
    }
    println!(
        "hostile inputs={} errors_correct={correct} panics={panics} files_left={files_left} runs_lost={runs_lost}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!((panics, files_left, runs_lost), (0, 0, 0));
}
