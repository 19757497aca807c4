//! The catalog against real SQLite files: schema, run life cycle, queue, metrics, rollups,
//! comparison series, dead-worker detection and concurrent use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::path::Path;
use std::time::{Duration, Instant};

use peft_studio_catalog::series::{config_diff, merge_to, smooth, Point, SeriesOptions, XAxis};
use peft_studio_catalog::{
    schema_version, Catalog, MetricRow, NewAdapter, NewEvaluation, NewRun, RunFilter, RunStatus,
};

fn new_run(name: &str, device: &str) -> NewRun {
    NewRun {
        name: name.into(),
        model_name: "tiny".into(),
        model_path: "/models/tiny".into(),
        architecture: Some("LlamaForCausalLM".into()),
        dataset_path: "/data/train.jsonl".into(),
        dataset_sha256: "ab".repeat(32),
        dataset_bytes: 123,
        method: "lora".into(),
        config: serde_json::json!({"method": {"r": 8}, "train": {"lr": 1e-3}}),
        out_dir: format!("/runs/{name}"),
        device: device.into(),
    }
}

fn step_row(step: i64, loss: f64) -> MetricRow {
    MetricRow {
        step,
        epoch: Some(step / 100),
        tokens_seen: Some(step * 512),
        wall_s: Some(step as f64 * 0.5),
        loss: Some(loss),
        lr: Some(1e-3),
        grad_norm: Some(1.0),
        tokens_per_s: Some(1000.0),
        eval_loss: None,
    }
}

fn open(dir: &Path) -> Catalog {
    Catalog::open(&dir.join("sub").join("catalog.sqlite")).expect("open catalog")
}

#[test]
fn migrates_from_empty_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    assert!(c.path().is_file(), "the file and its folder are created");
    let id = c.add_run(&new_run("a", "cpu")).unwrap();
    drop(c);
    // Reopening applies nothing twice and keeps the data.
    let c = open(dir.path());
    assert_eq!(c.run(id).unwrap().name, "a");
    assert_eq!(schema_version(), 2);
    // A file that is not a database is an error naming it, not a panic.
    let junk = dir.path().join("junk.sqlite");
    std::fs::write(
        &junk,
        b"this is not sqlite, just some text long enough to be a header",
    )
    .unwrap();
    let err = Catalog::open(&junk)
        .err()
        .expect("junk is refused")
        .to_string();
    assert!(err.contains("junk.sqlite"), "{err}");
}

#[test]
fn evaluations_are_kept_against_their_runs() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let (a, b) = (
        c.add_run(&new_run("a", "cpu")).unwrap(),
        c.add_run(&new_run("b", "cpu")).unwrap(),
    );
    let eval = |run_id: Option<i64>, ppl: f64| NewEvaluation {
        run_id,
        model: "tiny".into(),
        adapter: run_id.map(|r| format!("/runs/{r}/adapter")),
        task: "perplexity".into(),
        dataset: "/data/heldout.jsonl".into(),
        dataset_sha256: "cd".repeat(32),
        items: 10,
        metrics: [("perplexity".to_string(), ppl)].into(),
    };
    c.add_evaluation(&eval(Some(a), 3.5)).unwrap();
    c.add_evaluation(&eval(Some(b), 2.5)).unwrap();
    c.add_evaluation(&eval(None, 9.0)).unwrap();
    assert_eq!(c.evaluations(&[]).unwrap().len(), 3);
    let of_b = c.evaluations(&[b]).unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].fields.metrics["perplexity"], 2.5);
    assert_eq!(
        of_b[0].fields.adapter.as_deref(),
        Some(format!("/runs/{b}/adapter").as_str())
    );
    // A task the schema does not know is refused by the database itself.
    let mut bad = eval(None, 1.0);
    bad.task = "vibes".into();
    assert!(c.add_evaluation(&bad).is_err());
    // Deleting a run deletes its evaluations.
    c.finish(a, RunStatus::Cancelled, None).unwrap();
    c.delete_run(a).unwrap();
    assert_eq!(c.evaluations(&[]).unwrap().len(), 2);
}

#[test]
fn run_life_cycle_and_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let a = c.add_run(&new_run("a", "cpu")).unwrap();
    let b = c.add_run(&new_run("b", "cpu")).unwrap();
    let g = c.add_run(&new_run("g", "cuda:0")).unwrap();
    let me = std::process::id();
    // b is behind a on the same device; g has a device of its own.
    assert!(!c.claim(b, me).unwrap());
    assert!(c.claim(g, me).unwrap());
    assert!(c.claim(a, me).unwrap());
    assert!(!c.claim(b, me).unwrap(), "one run at a time per device");
    assert_eq!(c.run(a).unwrap().status, RunStatus::Running);
    assert!(c.finish(a, RunStatus::Completed, None).unwrap());
    assert!(
        !c.finish(a, RunStatus::Failed, Some("late")).unwrap(),
        "a stopped run stays as it ended"
    );
    assert!(c.claim(b, me).unwrap());
    // Cancel: a stop request for a running run, at once for a queued one.
    assert_eq!(c.request_cancel(b).unwrap(), RunStatus::Running);
    assert!(
        c.heartbeat(b, Some(1 << 20)).unwrap(),
        "the worker learns of the request"
    );
    c.finish(b, RunStatus::Cancelled, None).unwrap();
    let q = c.add_run(&new_run("q", "cpu")).unwrap();
    assert_eq!(c.request_cancel(q).unwrap(), RunStatus::Cancelled);
    // Resume puts a stopped run back in the queue with the request cleared.
    c.requeue(b).unwrap();
    let rb = c.run(b).unwrap();
    assert_eq!(
        (rb.status, rb.cancel_requested, rb.peak_memory_bytes),
        (RunStatus::Queued, false, Some(1 << 20))
    );
    assert!(c.requeue(b).is_err(), "a live run cannot be queued twice");
    assert!(c.delete_run(b).is_err(), "a live run cannot be deleted");
    // Listing, filters, tags, notes.
    c.tag(a, "baseline").unwrap();
    c.tag(a, "r8").unwrap();
    c.tag(a, "r8").unwrap();
    assert!(c.tag(a, "  ").is_err());
    c.add_note(a, "first try").unwrap();
    let listed = c.runs(&RunFilter::default()).unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![q, g, b, a]
    );
    let tagged = c
        .runs(&RunFilter {
            statuses: vec![],
            tag: Some("baseline".into()),
        })
        .unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].tags, vec!["baseline", "r8"]);
    let done = c
        .runs(&RunFilter {
            statuses: vec![RunStatus::Completed],
            tag: None,
        })
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(c.notes(a).unwrap()[0].1, "first try");
    c.untag(a, "r8").unwrap();
    assert_eq!(c.run(a).unwrap().tags, vec!["baseline"]);
    assert!(matches!(
        c.run(999),
        Err(peft_studio_catalog::CatalogError::NoSuchRun(999))
    ));
}

#[test]
fn metrics_merge_truncate_and_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let id = c.add_run(&new_run("m", "cpu")).unwrap();
    // Baseline evaluation, then steps, then an evaluation after step 2 in a later batch.
    c.write_metrics(
        id,
        &[MetricRow {
            step: 0,
            eval_loss: Some(3.0),
            ..Default::default()
        }],
    )
    .unwrap();
    c.write_metrics(
        id,
        &(1..=3)
            .map(|s| step_row(s, 3.0 - s as f64 * 0.1))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    c.write_metrics(
        id,
        &[MetricRow {
            step: 2,
            eval_loss: Some(2.5),
            ..Default::default()
        }],
    )
    .unwrap();
    let rows = c.metrics(id, -1).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[2].loss,
        Some(2.8),
        "the evaluation row keeps the step's loss"
    );
    assert_eq!(rows[2].eval_loss, Some(2.5));
    assert_eq!(c.evals(id).unwrap().len(), 2);
    let run = c.run(id).unwrap();
    assert_eq!((run.last_step, run.best_eval_loss), (Some(3), Some(2.5)));
    assert!((run.last_loss.unwrap() - 2.7).abs() < 1e-12);
    // A resume from the checkpoint at step 2 forgets step 3.
    c.truncate_metrics_after(id, 2).unwrap();
    assert_eq!(c.last_step(id).unwrap(), 2);
    // Checkpoints and adapters; deleting the run removes what belongs to it.
    c.set_checkpoints(id, &[(2, "/runs/m/checkpoints/step-00000002".into())])
        .unwrap();
    assert_eq!(c.checkpoints(id).unwrap().len(), 1);
    let adapter = NewAdapter {
        run_id: Some(id),
        path: "/runs/m/adapter".into(),
        method: "lora".into(),
        base_model: "/models/tiny".into(),
        sha256: "cd".repeat(32),
        size_bytes: 4096,
    };
    c.add_adapter(&adapter).unwrap();
    c.finish(id, RunStatus::Completed, None).unwrap();
    c.delete_run(id).unwrap();
    assert!(c.metrics(id, -1).unwrap().is_empty());
    assert!(c.checkpoints(id).unwrap().is_empty());
    assert_eq!(
        c.adapters(None).unwrap()[0].run_id,
        None,
        "the adapter outlives its run"
    );
}

#[test]
fn long_runs_are_downsampled_keeping_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let id = c.add_run(&new_run("long", "cpu")).unwrap();
    // 10,000 steps of a falling loss with one spike at step 5,000, written in batches as a
    // worker would.
    let loss = |s: i64| {
        if s == 5000 {
            50.0
        } else {
            5.0 / (1.0 + s as f64 / 1000.0)
        }
    };
    for chunk in (1..=10_000).collect::<Vec<i64>>().chunks(700) {
        c.write_metrics(
            id,
            &chunk
                .iter()
                .map(|&s| step_row(s, loss(s)))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    }
    let opts = SeriesOptions {
        x: XAxis::Step,
        max_points: 500,
        smoothing: 0.0,
    };
    let s = c.series(id, "long", &opts).unwrap();
    assert!(
        s.loss.len() <= 500 && s.loss.len() >= 100,
        "{} points",
        s.loss.len()
    );
    assert_eq!(
        s.loss.iter().map(|p| p.n as i64).sum::<i64>(),
        10_000,
        "every step is counted once"
    );
    assert!(
        s.loss.iter().any(|p| p.max == 50.0),
        "the spike survives as a bucket maximum"
    );
    assert!(s.loss.windows(2).all(|w| w[0].x < w[1].x));
    assert_eq!(s.loss.last().unwrap().x, 10_000.0);
    // Bucket means equal the raw means.
    let first = s.loss[0];
    let raw_mean = (1..=first.x as i64).map(loss).sum::<f64>() / first.n as f64;
    assert!((first.y - raw_mean).abs() < 1e-9);
    // Other axes; a truncation (resume) keeps rollups consistent.
    let by_tokens = c
        .series(
            id,
            "long",
            &SeriesOptions {
                x: XAxis::Tokens,
                ..opts
            },
        )
        .unwrap();
    assert_eq!(by_tokens.loss.last().unwrap().x, 10_000.0 * 512.0);
    c.truncate_metrics_after(id, 7_777).unwrap();
    let s = c.series(id, "long", &opts).unwrap();
    assert_eq!(s.loss.iter().map(|p| p.n as i64).sum::<i64>(), 7_777);
    assert_eq!(s.loss.last().unwrap().x, 7_777.0);
    // A short run is returned raw.
    let short = c.add_run(&new_run("short", "cpu")).unwrap();
    c.write_metrics(
        short,
        &(1..=20).map(|s| step_row(s, 1.0)).collect::<Vec<_>>(),
    )
    .unwrap();
    let s = c.series(short, "short", &opts).unwrap();
    assert_eq!(s.loss.len(), 20);
    assert!(s.loss.iter().all(|p| p.n == 1));
}

#[test]
fn merging_and_smoothing() {
    let pts: Vec<Point> = (0..10)
        .map(|i| Point {
            x: i as f64,
            y: i as f64,
            min: i as f64,
            max: i as f64,
            n: 1,
        })
        .collect();
    let merged = merge_to(&pts, 3);
    assert_eq!(merged.len(), 3);
    assert_eq!(
        (
            merged[0].x,
            merged[0].y,
            merged[0].min,
            merged[0].max,
            merged[0].n
        ),
        (3.0, 1.5, 0.0, 3.0, 4)
    );
    let mut flat: Vec<Point> = (0..5)
        .map(|i| Point {
            x: i as f64,
            y: 2.0,
            min: 2.0,
            max: 2.0,
            n: 1,
        })
        .collect();
    smooth(&mut flat, 0.9);
    assert!(
        flat.iter().all(|p| (p.y - 2.0).abs() < 1e-12),
        "debiased EMA of a constant is the constant"
    );
    let mut step: Vec<Point> = (0..50)
        .map(|i| Point {
            x: i as f64,
            y: if i < 25 { 0.0 } else { 1.0 },
            min: 0.0,
            max: 1.0,
            n: 1,
        })
        .collect();
    smooth(&mut step, 0.6);
    assert!(step[25].y > 0.0 && step[25].y < 1.0 && step[49].y > 0.99);
}

#[test]
fn config_diff_lists_only_differences() {
    let a = serde_json::json!({"method": {"r": 8, "kind": "lora"}, "train": {"lr": 0.001}});
    let b =
        serde_json::json!({"method": {"r": 16, "kind": "lora"}, "train": {"lr": 0.001, "seed": 1}});
    let d = config_diff(&[a, b]);
    assert_eq!(d.keys().collect::<Vec<_>>(), vec!["method.r", "train.seed"]);
    assert_eq!(d["train.seed"][0], None);
}

#[test]
fn dead_workers_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    // A process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = c.add_run(&new_run("dead", "cpu")).unwrap();
    assert!(c.claim(dead, dead_pid).unwrap());
    // A live process (this one) that beats.
    let alive = c.add_run(&new_run("alive", "cuda:0")).unwrap();
    assert!(c.claim(alive, std::process::id()).unwrap());
    let reaped = c.reap_dead().unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].0, dead);
    let run = c.run(dead).unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains(&format!("process {dead_pid}")));
    assert_eq!(c.run(alive).unwrap().status, RunStatus::Running);
    // The reaped worker, should it still beat, is told to stop.
    assert!(c.heartbeat(dead, None).unwrap());
    // Silence for longer than the timeout counts as death even if the pid exists.
    let reason = peft_studio_catalog::liveness::death_reason(
        Some(std::process::id() as i64),
        Some(peft_studio_catalog::now() - 60.0),
        0.0,
        peft_studio_catalog::now(),
    );
    assert!(reason.unwrap().contains("has not reported"));
}

/// A reader polls while a writer writes, each with its own connections as the app and a
/// worker would: neither ever sees `database is locked`. `PEFT_STUDIO_LOCK_TEST_S` sets the
/// duration (default 60 s).
#[test]
fn reader_and_writer_never_see_a_locked_database() {
    let secs: u64 = std::env::var("PEFT_STUDIO_LOCK_TEST_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let id = {
        let c = Catalog::open(&path).unwrap();
        let id = c.add_run(&new_run("busy", "cpu")).unwrap();
        c.set_pid(id, std::process::id()).unwrap();
        id
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let c = Catalog::open(&path).unwrap();
            let mut step = 0;
            while Instant::now() < deadline {
                let rows: Vec<MetricRow> = (0..20).map(|i| step_row(step + i + 1, 1.0)).collect();
                c.write_metrics(id, &rows).unwrap();
                c.heartbeat(id, None).unwrap();
                step += 20;
                std::thread::sleep(Duration::from_millis(5));
            }
            step
        })
    };
    let reader = Catalog::open(&path).unwrap();
    let mut polls = 0;
    while Instant::now() < deadline {
        reader.runs(&RunFilter::default()).unwrap();
        let last = reader.last_step(id).unwrap();
        reader.metrics(id, last - 100).unwrap();
        reader
            .series(id, "busy", &SeriesOptions::default())
            .unwrap();
        reader.reap_dead().unwrap();
        polls += 1;
    }
    let written = writer.join().unwrap();
    assert_eq!(reader.last_step(id).unwrap(), written);
    assert!(polls > 10, "the reader kept reading ({polls} polls)");
}
