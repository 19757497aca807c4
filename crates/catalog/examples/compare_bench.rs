//! Benchmark: fetch a comparison of many long runs, downsampled, and report the catalog's
//! size. `cargo run --release -p peft-studio-catalog --example compare_bench [RUNS STEPS POINTS]`
//! (default 50 runs × 100,000 steps, 2,000 points per series; goal: under 100 ms). With
//! `BENCH_CATALOG=path` the catalog is kept there and reused by the next run (writing it
//! takes minutes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may stop on failure

use std::time::Instant;

use peft_studio_catalog::series::SeriesOptions;
use peft_studio_catalog::{Catalog, MetricRow, NewRun};

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (runs, steps, points) = (arg(1, 50), arg(2, 100_000), arg(3, 2000));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = std::env::var_os("BENCH_CATALOG")
        .map_or_else(|| dir.path().join("catalog.sqlite"), Into::into);
    let reuse = path.exists();
    let catalog = Catalog::open(&path).expect("open");
    let started = Instant::now();
    let mut ids: Vec<i64> = Vec::new();
    if reuse {
        ids = catalog
            .runs(&Default::default())
            .expect("runs")
            .iter()
            .map(|r| r.id)
            .collect();
    }
    for r in 0..if reuse { 0 } else { runs } {
        let id = catalog
            .add_run(&NewRun {
                name: format!("run {r}"),
                model_name: "m".into(),
                model_path: "/m".into(),
                architecture: None,
                dataset_path: "/d".into(),
                dataset_sha256: "0".repeat(64),
                dataset_bytes: 0,
                method: "lora".into(),
                config: serde_json::json!({"r": r}),
                out_dir: format!("/runs/{r}"),
                device: "cpu".into(),
            })
            .expect("run");
        // Written as a worker writes: batches of steps, evaluations every 500 steps.
        let mut batch = Vec::with_capacity(1000);
        for step in 1..=steps as i64 {
            let x = step as f64;
            batch.push(MetricRow {
                step,
                epoch: Some(step / 10_000),
                tokens_seen: Some(step * 1024),
                wall_s: Some(x * 0.2),
                loss: Some(
                    2.0 / (1.0 + x / 5000.0) + 0.05 * ((step * 7919 + r as i64) % 17) as f64 / 17.0,
                ),
                eval_loss: (step % 500 == 0).then_some(2.0 / (1.0 + x / 5000.0)),
                lr: Some(1e-4),
                grad_norm: Some(1.0),
                tokens_per_s: Some(5000.0),
            });
            if batch.len() == 1000 {
                catalog.write_metrics(id, &batch).expect("write");
                batch.clear();
            }
        }
        catalog.write_metrics(id, &batch).expect("write");
        ids.push(id);
    }
    let write_s = started.elapsed().as_secs_f64();
    if !reuse {
        println!(
            "wrote {runs} runs x {steps} steps in {write_s:.1} s ({:.0} rows/s)",
            (runs * steps) as f64 / write_s
        );
    }
    let opts = SeriesOptions {
        max_points: points,
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut total_points = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let series: Vec<_> = ids
            .iter()
            .map(|&id| catalog.series(id, "r", &opts).expect("series"))
            .collect();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        total_points = series
            .iter()
            .map(|s| s.loss.len() + s.eval_loss.len())
            .sum::<usize>();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "compare {runs} runs x {steps} steps at <= {points} points/series: median {:.1} ms (min {:.1}, max {:.1}), {total_points} points",
        times[2], times[0], times[4]
    );
    drop(catalog);
    let size: u64 = std::fs::read_dir(path.parent().expect("a folder"))
        .expect("dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("catalog.sqlite")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "catalog size on disk: {:.1} MB ({:.1} bytes per step)",
        size as f64 / 1e6,
        size as f64 / (runs * steps) as f64
    );
}
