//! The app layer without a worker process: charts from real catalog data, run folders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use peft_studio_app::catalog::series::{SeriesOptions, XAxis};
use peft_studio_app::catalog::{Catalog, MetricRow, NewRun};
use peft_studio_app::chart::{render, series_color, ChartOptions};
use peft_studio_app::launch::utc_stamp;

fn run_with_curve(c: &Catalog, name: &str, scale: f64, steps: i64) -> i64 {
    let id = c
        .add_run(&NewRun {
            name: name.into(),
            model_name: "tiny".into(),
            model_path: "/m".into(),
            architecture: None,
            dataset_path: "/d.jsonl".into(),
            dataset_sha256: "00".repeat(32),
            dataset_bytes: 1,
            method: "lora".into(),
            config: serde_json::json!({}),
            out_dir: format!("/runs/{name}"),
            device: "cpu".into(),
        })
        .unwrap();
    let rows: Vec<MetricRow> = (1..=steps)
        .map(|s| MetricRow {
            step: s,
            epoch: Some(s / 50),
            tokens_seen: Some(s * 256),
            wall_s: Some(s as f64),
            loss: Some(
                scale * (3.0 / (1.0 + s as f64 / 40.0) + 0.2 * ((s * 7919) % 13) as f64 / 13.0),
            ),
            eval_loss: (s % 100 == 0).then_some(scale * 3.0 / (1.0 + s as f64 / 40.0)),
            ..Default::default()
        })
        .collect();
    c.write_metrics(id, &rows).unwrap();
    id
}

#[test]
fn comparison_chart_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
    let ids = [
        run_with_curve(&c, "r8", 1.0, 3000),
        run_with_curve(&c, "r16", 0.7, 3000),
    ];
    let opts = SeriesOptions {
        x: XAxis::Step,
        max_points: 400,
        smoothing: 0.3,
    };
    let series: Vec<_> = ids
        .iter()
        .map(|&id| c.series(id, &format!("run {id}"), &opts).unwrap())
        .collect();
    let png = dir.path().join("chart.png");
    render(&series, &ChartOptions::default(), &png).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1600, 900));
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        non_white > 20_000,
        "the chart is drawn ({non_white} non-white pixels)"
    );
    for i in 0..series.len() {
        let want = series_color(i);
        let hits = img
            .pixels()
            .filter(|p| p.0 == [want.0, want.1, want.2])
            .count();
        assert!(
            hits > 500,
            "series {i} is drawn in its colour ({hits} pixels)"
        );
    }
    let svg = dir.path().join("chart.svg");
    render(
        &series,
        &ChartOptions {
            log_y: true,
            ..Default::default()
        },
        &svg,
    )
    .unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg") && text.contains("run 1: loss") && text.contains("run 2: eval loss")
    );
    assert!(text.contains("loss (log scale)"));
    // Bad requests are errors naming the file.
    let err = render(
        &series,
        &ChartOptions::default(),
        &dir.path().join("chart.gif"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("chart.gif") && err.contains(".png or .svg"),
        "{err}"
    );
    let empty = c.series(999, "none", &opts).unwrap();
    let err = render(&[empty], &ChartOptions::default(), &png)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no metrics"), "{err}");
}

#[test]
fn utc_stamps() {
    assert_eq!(utc_stamp(0), "19700101-000000");
    assert_eq!(utc_stamp(951_782_400), "20000229-000000");
    assert_eq!(utc_stamp(1_795_941_296), "20261129-083456");
}

/// A follower sees live rows as they are written, and after a resume (metrics truncated to
/// the checkpoint) the retrained steps again, ending when the run ends.
#[test]
fn follow_streams_rows_and_starts_over_after_a_resume() {
    use peft_studio_app::catalog::RunStatus;
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let id = run_with_curve(&Catalog::open(&path).unwrap(), "live", 1.0, 0);
    let reader = {
        let path = path.clone();
        std::thread::spawn(move || {
            let c = Catalog::open(&path).unwrap();
            let mut seen: Vec<MetricRow> = Vec::new();
            let run = peft_studio_app::follow::follow(
                &c,
                id,
                &mut |rows| seen.extend_from_slice(rows),
                &AtomicBool::new(false),
            )
            .unwrap();
            (run.status, seen)
        })
    };
    let c = Catalog::open(&path).unwrap();
    c.set_pid(id, std::process::id()).unwrap();
    let row = |step: i64, loss: f64| MetricRow {
        step,
        loss: Some(loss),
        ..Default::default()
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(150));
    c.write_metrics(id, &(1..=10).map(|s| row(s, 1.0)).collect::<Vec<_>>())
        .unwrap();
    pause();
    c.truncate_metrics_after(id, 5).unwrap();
    c.write_metrics(id, &(6..=8).map(|s| row(s, 2.0)).collect::<Vec<_>>())
        .unwrap();
    pause();
    c.finish(id, RunStatus::Completed, None).unwrap();
    let (status, seen) = reader.join().unwrap();
    assert_eq!(status, RunStatus::Completed);
    assert!(
        seen.iter().any(|r| r.step == 10),
        "the first rows were streamed"
    );
    let last_of = |step: i64| {
        seen.iter()
            .rev()
            .find(|r| r.step == step)
            .and_then(|r| r.loss)
    };
    assert_eq!(
        (last_of(6), last_of(8)),
        (Some(2.0), Some(2.0)),
        "retrained steps are sent again"
    );
}

/// Shared adapters come into the catalog checked: PEFT's and the adapters library's folders
/// are recorded with their method and base model; pickles, foreign configs and corrupt
/// weights are refused with the file named, and nothing is recorded for them.
#[test]
fn imported_adapters_are_checked_then_recorded() {
    use peft_studio_app::adapters::import_adapter;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Catalog::open(&dir.path().join("c.sqlite")).expect("catalog");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/reference");
    import_adapter(&catalog, dir.path(), &fixtures.join("peft/ia3_qwen2"), None).expect("peft ia3");
    import_adapter(
        &catalog,
        dir.path(),
        &fixtures.join("adapters/houlsby"),
        None,
    )
    .expect("houlsby");
    let recorded: Vec<(String, Option<i64>)> = catalog
        .adapters(None)
        .expect("list")
        .into_iter()
        .map(|a| (a.method, a.run_id))
        .collect();
    assert_eq!(
        recorded,
        vec![("ia3".to_string(), None), ("houlsby".to_string(), None)]
    );

    let pickled = dir.path().join("pickled");
    std::fs::create_dir_all(&pickled).expect("mkdir");
    std::fs::write(pickled.join("adapter_model.bin"), b"\x80\x02}q\x00.").expect("bin");
    let err = import_adapter(&catalog, dir.path(), &pickled, None)
        .expect_err("pickle")
        .to_string();
    assert!(
        err.contains("can run code") && err.contains("pickled"),
        "{err}"
    );

    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::copy(
        fixtures.join("peft/ia3_qwen2/adapter_model.safetensors"),
        foreign.join("adapter_model.safetensors"),
    )
    .expect("copy");
    std::fs::write(
        foreign.join("adapter_config.json"),
        r#"{"peft_type": "LOHA"}"#,
    )
    .expect("cfg");
    let err = import_adapter(&catalog, dir.path(), &foreign, None)
        .expect_err("loha")
        .to_string();
    assert!(
        err.contains("LOHA") && err.contains("adapter_config.json"),
        "{err}"
    );

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).expect("mkdir");
    std::fs::write(
        corrupt.join("adapter_config.json"),
        r#"{"peft_type": "LORA"}"#,
    )
    .expect("cfg");
    std::fs::write(corrupt.join("adapter_model.safetensors"), [255u8; 12]).expect("bad");
    let err = import_adapter(&catalog, dir.path(), &corrupt, None)
        .expect_err("corrupt")
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    assert_eq!(
        catalog.adapters(None).expect("list").len(),
        2,
        "nothing recorded for refusals"
    );
}

/// A trained tiny LoRA run in `dir`: its folder and the tiny model's.
fn trained_tiny_lora(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
    use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};
    let model = dir.join("model");
    write_tiny_model(&model, &TinySpec::default()).unwrap();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"the cat sat on the mat\"}\n".repeat(8)).unwrap();
    let cfg = peft_studio_engine::run::RunConfig {
        model: model.clone(),
        dataset: data,
        out: dir.join("run"),
        method: MethodConfig {
            kind: MethodKind::Lora,
            r: 4,
            lora_alpha: 8.0,
            target_modules: Some(TargetModules::parse_cli("q_proj,k_proj,v_proj")),
            ..Default::default()
        },
        train: peft_studio_engine::train::TrainConfig {
            lr: 5e-2,
            max_steps: Some(3),
            batch_size: 2,
            seq_len: 16,
            ..Default::default()
        },
        data: Default::default(),
        eval: Default::default(),
        target: Default::default(),
    };
    let mut sink = peft_studio_engine::train::Recorder::default();
    peft_studio_engine::run::train(&cfg, false, &mut sink, &Default::default()).unwrap();
    (cfg.out, model)
}

/// Exports carry a README model card with the run's figures; a GGUF LoRA export imports back
/// against its base model (and is refused without one, or for a model it does not fit, leaving
/// no folder behind); an adapter naming another base model imports with a warning; NaN
/// weights are refused with the tensor named.
#[test]
fn exports_carry_a_card_and_imports_are_checked_against_their_base() {
    use peft_studio_app::adapters::import_adapter;
    use peft_studio_app::export::{export_checkpoint, latest_checkpoint, ExportFormat};
    let dir = tempfile::tempdir().unwrap();
    let (run, model) = trained_tiny_lora(dir.path());
    let checkpoint = latest_checkpoint(&run).unwrap();
    let peft = dir.path().join("peft");
    export_checkpoint(&checkpoint, ExportFormat::Peft, &peft).unwrap();
    let card = std::fs::read_to_string(peft.join("README.md")).unwrap();
    let last_loss = std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "step")
        .and_then(|e| e["loss"].as_f64())
        .unwrap();
    for needle in [
        "library_name: peft".to_string(),
        "| Steps | 3 |".to_string(),
        format!("| Final training loss | {last_loss:.4} |"),
        "r = 4".to_string(),
        "PeftModel.from_pretrained".to_string(),
    ] {
        assert!(card.contains(&needle), "card lacks `{needle}`:\n{card}");
    }

    let gguf = dir.path().join("lora.gguf");
    export_checkpoint(&checkpoint, ExportFormat::GgufLora, &gguf).unwrap();
    let q8 = dir.path().join("merged-q8.gguf");
    export_checkpoint(&checkpoint, "gguf-q8_0".parse().unwrap(), &q8).unwrap();
    assert_eq!(&std::fs::read(&q8).unwrap()[..4], b"GGUF");

    let catalog = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
    let store = dir.path().join("store");
    let err = import_adapter(&catalog, &store, &gguf, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("base model"), "{err}");
    let other = dir.path().join("other");
    peft_studio_engine::fixtures::write_tiny_model(
        &other,
        &peft_studio_engine::fixtures::TinySpec {
            hidden_size: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let err = import_adapter(&catalog, &store, &gguf, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    assert!(
        std::fs::read_dir(&store).map_or(true, |mut d| d.next().is_none()),
        "a refused import leaves no folder"
    );
    let imported = import_adapter(&catalog, &store, &gguf, Some(&model)).unwrap();
    assert!(imported.path.starts_with(&store), "{:?}", imported.path);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);

    // A PEFT folder naming another base model: it fits, so a warning, not an error.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    std::fs::copy(
        peft.join("adapter_model.safetensors"),
        renamed.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    config["base_model_name_or_path"] = "org/another-model".into();
    std::fs::write(renamed.join("adapter_config.json"), config.to_string()).unwrap();
    let warned = import_adapter(&catalog, &store, &renamed, Some(&model)).unwrap();
    assert!(
        warned
            .warnings
            .iter()
            .any(|w| w.contains("org/another-model")),
        "{:?}",
        warned.warnings
    );

    // NaN weights: refused, the tensor named.
    let poisoned = dir.path().join("poisoned");
    std::fs::create_dir_all(&poisoned).unwrap();
    std::fs::copy(
        peft.join("adapter_config.json"),
        poisoned.join("adapter_config.json"),
    )
    .unwrap();
    let mut tensors =
        peft_studio_engine::model::load::read_safetensors(&peft.join("adapter_model.safetensors"))
            .unwrap();
    let (name, t) = tensors
        .iter()
        .next()
        .map(|(n, t)| (n.clone(), t.clone()))
        .unwrap();
    let nan = (t.zeros_like().unwrap() + f64::NAN).unwrap();
    tensors.insert(name.clone(), nan);
    let tensors: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    std::fs::write(
        poisoned.join("adapter_model.safetensors"),
        peft_studio_engine::fsutil::safetensors_bytes(&tensors, None).unwrap(),
    )
    .unwrap();
    let err = import_adapter(&catalog, &store, &poisoned, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains(&name), "{err}");
    assert_eq!(
        catalog.adapters(None).unwrap().len(),
        2,
        "two imports recorded"
    );
}

/// What the run view may offer follows the run's state: Stop while a worker is behind it,
/// Resume once it stopped before its end; a completed run offers neither.
#[test]
fn a_run_s_detail_says_what_can_be_done_with_it() {
    use peft_studio_app::catalog::RunStatus;
    use peft_studio_app::runs::detail;
    let dir = tempfile::tempdir().unwrap();
    let c = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
    let flags = |id| {
        let d = detail(&c, id).unwrap();
        (d.can_stop, d.can_resume)
    };
    let queued = run_with_curve(&c, "queued", 1.0, 3);
    assert_eq!(flags(queued), (true, false));
    for (status, want) in [
        (RunStatus::Cancelled, (false, true)),
        (RunStatus::Failed, (false, true)),
        (RunStatus::Completed, (false, false)),
    ] {
        let id = run_with_curve(&c, status.as_str(), 1.0, 3);
        c.finish(id, status, None).unwrap();
        assert_eq!(flags(id), want, "{}", status.as_str());
    }
}
