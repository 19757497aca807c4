//! The shell's commands through Tauri's IPC, without a display.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, INVOKE_KEY};
use tauri::webview::InvokeRequest;

fn invoke(cmd: &str) -> tauri::ipc::InvokeResponseBody {
    invoke_with(cmd, serde_json::json!({})).expect("response")
}

fn invoke_with(
    cmd: &str,
    args: serde_json::Value,
) -> Result<tauri::ipc::InvokeResponseBody, serde_json::Value> {
    let app = peft_studio_shell::builder_for(mock_builder())
        .build(mock_context(noop_assets()))
        .expect("app");
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("webview");
    get_ipc_response(&webview, request(cmd, args))
}

/// The request the page sends for `cmd` with `args`.
fn request(cmd: &str, args: serde_json::Value) -> InvokeRequest {
    InvokeRequest {
        cmd: cmd.into(),
        callback: tauri::ipc::CallbackFn(0),
        error: tauri::ipc::CallbackFn(1),
        url: "tauri://localhost".parse().expect("url"),
        body: tauri::ipc::InvokeBody::Json(args),
        headers: Default::default(),
        invoke_key: INVOKE_KEY.to_string(),
    }
}

#[test]
fn app_info_answers_over_ipc() {
    let info: serde_json::Value = invoke("app_info").deserialize().expect("json");
    assert_eq!(info["name"], "PEFT Studio");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

/// The commands that read the studio home and the catalog, in one test because they share
/// the process-wide PEFT_STUDIO_HOME.
#[test]
fn commands_over_ipc_in_a_fresh_home() {
    let home = tempfile::tempdir().expect("tempdir");
    std::env::set_var("PEFT_STUDIO_HOME", home.path());
    std::env::set_var("PEFT_STUDIO_CATALOG", home.path().join("catalog.sqlite"));

    // The model library the CLI writes.
    let model_dir = home.path().join("models/tiny");
    peft_studio_engine::fixtures::write_tiny_model(&model_dir, &Default::default()).expect("model");
    let entry = peft_studio_engine::library::ModelEntry {
        name: "tiny".into(),
        path: model_dir.clone(),
        source: "local".into(),
        architecture: "LlamaForCausalLM".into(),
        family: "Llama".into(),
        encoder_decoder: false,
        parameters: 1000,
        dtype: "F32".into(),
        context_length: 256,
        size_bytes: 4000,
        added_unix: 1,
    };
    let mut registry = peft_studio_engine::library::Registry::open(home.path()).expect("open");
    registry.put(entry).expect("save");
    let models: serde_json::Value = invoke("list_models").deserialize().expect("json");
    assert_eq!(models[0]["name"], "tiny");

    // The method step: counts as PEFT prints them and a memory prediction.
    let plan: serde_json::Value = invoke_with(
        "plan_run",
        serde_json::json!({"model": "tiny", "method": {"kind": "lora", "r": 4}, "batchSize": 2, "seqLen": 16}),
    )
    .expect("plan")
    .deserialize()
    .expect("json");
    assert!(plan["line"]
        .as_str()
        .expect("line")
        .starts_with("trainable params: "));
    assert!(plan["memory_total"].as_u64().expect("memory") > 0);
    let bad = invoke_with(
        "plan_run",
        serde_json::json!({"model": "tiny", "method": {"kind": "lora", "r": 0}, "batchSize": 2, "seqLen": 16}),
    )
    .expect_err("r = 0");
    assert!(
        bad["message"].as_str().expect("message").contains('r'),
        "{bad}"
    );

    // The demo: its dataset written once, the installed model picked.
    let demo: serde_json::Value = invoke("demo_setup").deserialize().expect("json");
    assert_eq!(demo["model"], "tiny");
    let dataset = demo["dataset"].as_str().expect("path").to_string();
    assert!(std::path::Path::new(&dataset).is_file());

    // A broken dataset: every problem with its line.
    let broken = home.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"text\": \"fine\"}\n{\"text\": 5}\nnot json\n").expect("write");
    let view: serde_json::Value = invoke_with(
        "inspect_dataset",
        serde_json::json!({"path": broken, "model": "tiny"}),
    )
    .expect("inspect")
    .deserialize()
    .expect("json");
    let lines: Vec<u64> = view["report"]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, vec![2, 3]);
    assert_eq!(view["report"]["usable"], 1);
    assert_eq!(view["preview"][0]["line"], 1);
    let missing = invoke_with(
        "inspect_dataset",
        serde_json::json!({"path": home.path().join("nope.jsonl"), "model": null}),
    )
    .expect_err("missing file");
    assert!(missing["message"]
        .as_str()
        .expect("message")
        .contains("nope.jsonl"));

    // Runs: an empty catalog lists nothing; an unknown run is an error naming it.
    let runs: serde_json::Value = invoke("list_runs").deserialize().expect("json");
    assert_eq!(runs, serde_json::json!([]));
    let err = invoke_with("get_run", serde_json::json!({"id": 99})).expect_err("no run");
    assert!(
        err["message"].as_str().expect("message").contains("99"),
        "{err}"
    );

    // A recorded run with metrics, as a worker leaves it, read back through every command the
    // run screens use; their answers' shapes are the UI's contract (see below).
    let catalog =
        peft_studio_app::catalog::Catalog::open(&home.path().join("catalog.sqlite")).expect("db");
    let cfg = peft_studio_engine::run::RunConfig {
        model: model_dir.clone(),
        dataset: dataset.clone().into(),
        out: home.path().join("runs/one"),
        method: Default::default(),
        train: Default::default(),
        data: Default::default(),
        eval: Default::default(),
        target: Default::default(),
    };
    let id = peft_studio_app::launch::create_run(&catalog, &cfg, Some("one")).expect("run");
    let rows: Vec<peft_studio_app::catalog::MetricRow> = (0..5)
        .map(|step| peft_studio_app::catalog::MetricRow {
            step,
            epoch: Some(0),
            tokens_seen: Some(step * 100),
            wall_s: Some(step as f64),
            loss: (step > 0).then_some(3.0 - step as f64 * 0.1),
            eval_loss: (step % 2 == 0).then_some(3.1 - step as f64 * 0.1),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens_per_s: Some(1000.0),
        })
        .collect();
    catalog.write_metrics(id, &rows).expect("metrics");
    let answer = |cmd: &str, args: serde_json::Value| -> serde_json::Value {
        invoke_with(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
            .deserialize()
            .expect("json")
    };
    let comparison = answer(
        "compare_runs",
        serde_json::json!({"ids": [id], "x": "tokens", "smoothing": 0.5, "maxPoints": 100}),
    );
    assert_eq!(
        comparison["series"][0]["loss"]
            .as_array()
            .expect("loss")
            .len(),
        4
    );
    let bad = invoke_with(
        "compare_runs",
        serde_json::json!({"ids": [id], "x": "furlongs", "smoothing": 0.0}),
    )
    .expect_err("bad axis");
    assert!(
        bad["message"]
            .as_str()
            .expect("message")
            .contains("furlongs"),
        "{bad}"
    );
    hostile_inputs_over_ipc(home.path(), &dataset, &broken);
    let shapes = serde_json::json!({
        "list_runs": shape(&answer("list_runs", serde_json::json!({}))),
        "get_run": shape(&answer("get_run", serde_json::json!({"id": id}))),
        "compare_runs": shape(&comparison),
        "plan_run": shape(&plan),
        "list_quantizations": shape(&answer("list_quantizations", serde_json::json!({}))),
        "inspect_dataset": shape(&view),
        "demo_setup": shape(&demo),
        "list_models": shape(&models),
        "metric_row": shape(&serde_json::to_value(&rows[2]).expect("row")),
    });
    check_snapshot(
        "shapes.json",
        &(serde_json::to_string_pretty(&shapes).expect("json") + "\n"),
    );
}

/// The shape of a value: its keys and value kinds, recursively; an array by its first item.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

/// Compares `now` with the snapshot `ui/tests/ipc/NAME` that the UI's tests read
/// (UPDATE_IPC_SNAPSHOTS=1 rewrites it).
fn check_snapshot(name: &str, now: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ui/tests/ipc")
        .join(name);
    if std::env::var_os("UPDATE_IPC_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, now).expect("write");
    }
    let saved = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        saved == now,
        "{} is out of date: run UPDATE_IPC_SNAPSHOTS=1 cargo test --test shell, then the UI tests",
        path.display()
    );
}

/// The UI's tests read the method descriptions from this snapshot of the backend's answer.
#[test]
fn ipc_snapshot_of_the_method_picker_is_current() {
    let now =
        serde_json::to_string_pretty(&peft_studio_app::describe::methods()).expect("json") + "\n";
    check_snapshot("methods.json", &now);
}

/// The UI's tests read the New run form's settings (the `[train]` descriptions, presets,
/// formats) from this snapshot of the backend's answer.
#[test]
fn ipc_snapshot_of_the_form_settings_is_current() {
    let now = serde_json::to_string_pretty(&peft_studio_app::describe::form_settings())
        .expect("json")
        + "\n";
    check_snapshot("settings.json", &now);
}

/// The webview may call exactly the commands the UI calls: the capability grants each by name
/// (and of the dialog plugin only open, save and message; no shell or file-system plugin), and
/// with the app's real ACL a command or plugin call not granted is refused.
#[test]
fn the_webview_may_call_only_what_the_ui_calls() {
    use std::collections::BTreeSet;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every `invoke("name"` and `withProgress("name"` in the UI's code.
    let mut called = BTreeSet::new();
    let mut stack = vec![root.join("ui/public/js")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("ui dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "js") {
                let text = std::fs::read_to_string(&p).expect("js");
                for opener in ["invoke(\"", "withProgress(\""] {
                    for part in text.split(opener).skip(1) {
                        let name: String = part.chars().take_while(|c| *c != '"').collect();
                        if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                            called.insert(name.replace('_', "-"));
                        }
                    }
                }
            }
        }
    }
    let capability: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("src-tauri/capabilities/default.json"))
            .expect("capability"),
    )
    .expect("json");
    let permissions: Vec<&str> = capability["permissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    let granted: BTreeSet<String> = permissions
        .iter()
        .filter_map(|p| p.strip_prefix("allow-"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        granted, called,
        "granted commands = the commands the UI calls"
    );
    let plugins: BTreeSet<&str> = permissions
        .iter()
        .filter(|p| !p.starts_with("allow-"))
        .copied()
        .collect();
    assert_eq!(
        plugins,
        BTreeSet::from(["core:default"]),
        "no plugin permission: the studio opens its dialogs itself (choose_path)"
    );

    // The app's real ACL, compiled from the capabilities.
    let app = peft_studio_shell::builder_for(mock_builder())
        .build(tauri::generate_context!())
        .expect("app");
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("webview");
    let call = |cmd: &str| get_ipc_response(&webview, request(cmd, serde_json::json!({})));
    assert!(call("app_info").is_ok(), "a granted command answers");
    for refused in [
        "plugin:dialog|open",
        "plugin:dialog|save",
        "plugin:dialog|ask",
        "plugin:fs|read_file",
        "plugin:shell|execute",
        "no_such_command",
    ] {
        let err = call(refused).expect_err(refused).to_string();
        assert!(err.contains("not allowed"), "{refused}: {err}");
    }
}

/// The page may load only the app's own files: no inline scripts or styles, no eval, no
/// remote origin (and the UI's code sets no style attribute, which this CSP would refuse).
#[test]
fn the_content_security_policy_allows_only_the_apps_own_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tauri.conf.json")).expect("tauri.conf.json"),
    )
    .expect("json");
    let csp = conf["app"]["security"]["csp"].as_str().expect("a CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    for forbidden in ["unsafe-inline", "unsafe-eval", "http://*", "https:", "*;"] {
        assert!(!csp.contains(forbidden), "{forbidden} in {csp}");
    }
    let mut stack = vec![root.join("ui/public")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("ui dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "js" || e == "html") {
                let text = std::fs::read_to_string(&p).expect("ui file");
                for inline in [
                    "style: `",
                    "style: \"",
                    "style=\"",
                    "<style",
                    "setAttribute(\"style\"",
                ] {
                    assert!(
                        !text.contains(inline),
                        "{} sets an inline style",
                        p.display()
                    );
                }
            }
        }
    }
}

/// Write destinations from the webview are confined: relative paths, `..`, system folders and
/// the wrong kind of file are refused before anything is written.
#[test]
fn write_destinations_outside_the_users_folders_are_refused() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let tmp = std::env::temp_dir();
    let unchosen = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "peft", "dest": "relative/out"}),
            "absolute",
        ),
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "peft", "dest": format!("{}/../../etc/x", tmp.display())}),
            "..",
        ),
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "merged", "dest": "/etc/cron.d/studio"}),
            "system folder",
        ),
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "gguf-lora", "dest": "/proc/self/x.gguf"}),
            "system folder",
        ),
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "gguf-f16", "dest": format!("{home}/.bashrc")}),
            ".gguf",
        ),
        (
            "save_compare_chart",
            serde_json::json!({"ids": [1], "x": "step", "smoothing": 0.0, "logY": false, "dest": format!("{home}/.profile")}),
            ".png",
        ),
        (
            "save_compare_chart",
            serde_json::json!({"ids": [1], "x": "step", "smoothing": 0.0, "logY": false, "dest": "/usr/local/bin/chart.png"}),
            "system folder",
        ),
        (
            "save_compare_chart",
            serde_json::json!({"ids": [1], "x": "step", "smoothing": 0.0, "logY": false, "dest": unchosen.path().join("chart.png")}),
            "not chosen",
        ),
        (
            "export_run",
            serde_json::json!({"id": 1, "format": "peft", "dest": unchosen.path().join("adapter")}),
            "not chosen",
        ),
    ];
    for (cmd, args, why) in cases {
        let err = invoke_with(cmd, args.clone()).expect_err(cmd);
        assert!(
            err["message"].as_str().unwrap_or_default().contains(why),
            "{cmd} {args}: {err}"
        );
    }
}

/// Read sources from the webview are confined too: relative paths, `..`, system and kernel
/// files, credential folders, paths the user never chose and files of the wrong kind are
/// refused before anything is opened, so no call can have the studio show the page a key as
/// "dataset lines".
#[test]
fn read_sources_outside_the_users_folders_are_refused() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let tmp = tempfile::tempdir().expect("tmp");
    // Files here may be named by typing (as a user's trusted data folder); `unchosen` was
    // never picked in a dialog. No other test depends on this variable.
    std::env::set_var(peft_studio_shell::paths::TRUSTED_FOLDERS, tmp.path());
    let unchosen = tempfile::tempdir().expect("tmp");
    let data = unchosen.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"private\"}\n").expect("data");
    let key = tmp.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----").expect("key");
    let dataset = |path: String| serde_json::json!({ "path": path });
    let cases = [
        ("inspect_dataset", dataset("data.jsonl".into()), "absolute"),
        (
            "inspect_dataset",
            dataset(format!("{}/../../etc/passwd.jsonl", tmp.path().display())),
            "..",
        ),
        (
            "inspect_dataset",
            dataset("/etc/passwd".into()),
            "system folder",
        ),
        (
            "inspect_dataset",
            dataset("/proc/self/environ".into()),
            "system folder",
        ),
        (
            "inspect_dataset",
            dataset(format!("{home}/.ssh/id_rsa.json")),
            "credentials",
        ),
        (
            "inspect_dataset",
            dataset(format!("{home}/.docker/config.json")),
            "credentials",
        ),
        (
            "inspect_dataset",
            dataset(key.display().to_string()),
            ".jsonl",
        ),
        (
            "inspect_dataset",
            dataset(tmp.path().display().to_string()),
            "folder",
        ),
        (
            "inspect_dataset",
            dataset(data.display().to_string()),
            "not chosen",
        ),
        (
            "import_model",
            serde_json::json!({"path": unchosen.path(), "onProgress": "__CHANNEL__:7"}),
            "not chosen",
        ),
        (
            "import_adapter",
            serde_json::json!({"path": unchosen.path()}),
            "not chosen",
        ),
        (
            "start_run",
            serde_json::json!({"request": {"model": "tiny", "dataset": data,
            "method": {"kind": "lora"}, "train": {}}}),
            "not chosen",
        ),
        (
            "import_model",
            serde_json::json!({"path": "/dev/zero", "onProgress": "__CHANNEL__:7"}),
            "system folder",
        ),
        (
            "import_model",
            serde_json::json!({"path": key.display().to_string(), "onProgress": "__CHANNEL__:7"}),
            ".gguf",
        ),
        (
            "import_adapter",
            serde_json::json!({"path": format!("{home}/.aws/credentials")}),
            "credentials",
        ),
        (
            "start_run",
            serde_json::json!({"request": {"model": "tiny", "dataset": key.display().to_string(),
            "method": {"kind": "lora"}, "train": {}}}),
            ".jsonl",
        ),
    ];
    for (cmd, args, why) in cases {
        let err = invoke_with(cmd, args.clone()).expect_err(cmd);
        assert!(
            err["message"].as_str().unwrap_or_default().contains(why),
            "{cmd} {args}: {err}"
        );
    }
}

/// Part of the hostile-input corpus through the desktop's commands (the CLI's test has all of
/// it): each is refused with a message naming the file or field, and nothing is recorded or
/// left in the studio's folders. Runs inside `commands_over_ipc_in_a_fresh_home`, which owns
/// the process's studio home.
fn hostile_inputs_over_ipc(home: &std::path::Path, dataset: &str, broken: &std::path::Path) {
    let listing = |cmd: &str| {
        let v: serde_json::Value = invoke(cmd).deserialize().expect("json");
        v.as_array().map_or(0, Vec::len)
    };
    let runs_folder = || std::fs::read_dir(home.join("runs")).map_or(0, |d| d.count());
    let before = (
        listing("list_runs"),
        listing("list_adapters"),
        runs_folder(),
    );
    let no_config = home.join("no-config");
    peft_studio_engine::fixtures::write_tiny_model(&no_config, &Default::default()).expect("model");
    std::fs::remove_file(no_config.join("config.json")).expect("rm");
    let pickle = home.join("pickle");
    std::fs::create_dir_all(&pickle).expect("mkdir");
    std::fs::write(
        pickle.join("adapter_config.json"),
        r#"{"peft_type": "LORA"}"#,
    )
    .expect("cfg");
    std::fs::write(pickle.join("adapter_model.bin"), b"\x80\x02cos\nsystem\n.").expect("bin");
    let magic = home.join("magic.gguf");
    std::fs::write(&magic, b"GGML\x03\x00\x00\x00").expect("gguf");
    let run = |model: &str, data: &str, lr: f64, r: usize| {
        serde_json::json!({"request": {"model": model, "dataset": data,
            "method": {"kind": "lora", "r": r}, "train": {"lr": lr, "max_steps": 1}}})
    };
    let with_eval = |mut request: serde_json::Value, task: &str, data: Option<&str>| {
        request["request"]["eval"] = serde_json::json!({"task": task, "data": data});
        request
    };
    let cases = [
        (
            "start_run",
            run(&no_config.display().to_string(), dataset, 1e-3, 4),
            "config.json",
        ),
        (
            "start_run",
            run("tiny", &broken.display().to_string(), 1e-3, 4),
            "broken.jsonl:2",
        ),
        ("start_run", run("tiny", dataset, -1.0, 4), "lr"),
        ("start_run", run("tiny", dataset, 1e-3, 0), "rank"),
        // The file of the evaluation at the end is a read source like the dataset, and a task
        // needs one.
        (
            "start_run",
            with_eval(
                run("tiny", dataset, 1e-3, 4),
                "perplexity",
                Some("/etc/passwd"),
            ),
            "system folder",
        ),
        (
            "start_run",
            with_eval(run("tiny", dataset, 1e-3, 4), "perplexity", None),
            "eval.data",
        ),
        (
            "import_adapter",
            serde_json::json!({"path": pickle, "model": "tiny"}),
            "pickled",
        ),
        (
            "import_adapter",
            serde_json::json!({"path": magic, "model": "tiny"}),
            "magic",
        ),
        (
            "import_adapter",
            serde_json::json!({"path": magic, "model": null}),
            "base model",
        ),
    ];
    for (cmd, args, mention) in cases {
        let err = invoke_with(cmd, args.clone()).expect_err(cmd);
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(mention), "{cmd} {args}: {err}");
    }
    let after = (
        listing("list_runs"),
        listing("list_adapters"),
        runs_folder(),
    );
    assert_eq!(before, after, "(runs, adapters, run folders) unchanged");
}

/// What the user picks in the studio's dialog (`choose_path` grants it) becomes readable and
/// writable, a picked folder with what is in it, and nothing beside it.
#[test]
fn a_path_picked_in_a_dialog_is_accepted_and_nothing_beside_it() {
    use peft_studio_shell::paths::{read_source, write_destination, Chosen, DATASET};
    let dir = tempfile::tempdir().expect("tmp");
    let picked = dir.path().join("picked.jsonl");
    let beside = dir.path().join("beside.jsonl");
    let folder = dir.path().join("exports");
    for f in [&picked, &beside] {
        std::fs::write(f, "{\"text\": \"x\"}\n").expect("write");
    }
    let chosen = Chosen::default();
    assert!(
        read_source(&picked, DATASET, &chosen).is_err(),
        "nothing chosen yet"
    );
    chosen.grant(picked.clone());
    chosen.grant(folder.clone());
    assert_eq!(
        read_source(&picked, DATASET, &chosen).expect("picked"),
        picked
    );
    let err = read_source(&beside, DATASET, &chosen).expect_err("beside");
    assert!(err.message.contains("not chosen"), "{err:?}");
    let inside = folder.join("run-3/adapter");
    assert_eq!(
        write_destination(&inside, &[], &chosen).expect("inside"),
        inside
    );
    assert!(write_destination(&dir.path().join("other"), &[], &chosen).is_err());
}

/// The UI's tests check its requests against each command's parameters as the Rust source
/// declares them (camelCase, as Tauri names them; required unless an `Option`; `State` and
/// the `AppHandle` are Tauri's to give), from this snapshot.
#[test]
fn ipc_snapshot_of_the_commands_is_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src-tauri/src/commands");
    let mut commands = std::collections::BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("commands")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for part in text.split("#[tauri::command]").skip(1) {
            let sig = &part[part.find("fn ").expect("fn") + 3..];
            let open = sig.find('(').expect("(");
            // `choose_path<R: Runtime>`: the name ends at its generics.
            let name = sig[..open]
                .split('<')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let mut params = serde_json::Map::new();
            for param in top_level_items(&sig[open + 1..]) {
                let Some((pname, ty)) = param.split_once(':') else {
                    continue;
                };
                let ty = ty.trim();
                let injected = ["State<", "tauri::State<", "AppHandle<"];
                if injected.iter().any(|t| ty.starts_with(t)) {
                    continue;
                }
                params.insert(camel(pname.trim()), (!ty.starts_with("Option<")).into());
            }
            commands.insert(name, serde_json::Value::Object(params));
        }
    }
    assert!(commands.len() > 20, "{commands:?}");
    let now = serde_json::to_string_pretty(&commands).expect("json") + "\n";
    check_snapshot("commands.json", &now);
}

/// The comma-separated items of a parameter list up to its closing `)`.
fn top_level_items(list: &str) -> Vec<String> {
    let (mut items, mut depth, mut current) = (Vec::new(), 0i32, String::new());
    for c in list.chars() {
        match c {
            '(' | '<' | '[' => depth += 1,
            ')' if depth == 0 => break,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.into_iter().filter(|i| !i.trim().is_empty()).collect()
}

/// `max_steps` as the page sends it: `maxSteps`.
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
