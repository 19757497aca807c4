//! Runs through the catalog and worker processes: a killed worker resumes to the same
//! losses, a killed parent leaves its run training, runs queue one at a time per device.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{cli, cli_command, ok, s, setup, stderr, stdout};

/// A run config of `steps` steps that checkpoints every 20 and evaluates every 10 on a
/// quarter of an 8-record dataset written beside `data`.
fn run_config(dir: &Path, model: &Path, data: &Path, name: &str, steps: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let data = data.with_file_name("eight.jsonl");
    let records: Vec<String> = (0..8)
        .map(|i| format!("{{\"prompt\": \"Q{i}: hi\", \"completion\": \" hello {i} world\"}}"))
        .collect();
    if !data.exists() {
        std::fs::write(&data, records.join("\n")).expect("dataset");
    }
    let data = data.as_path();
    let text = format!(
        "model = {:?}\ndataset = {:?}\nout = {name:?}\n\n[method]\nkind = \"lora\"\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\n[train]\nlr = 0.01\nbatch_size = 2\nseq_len = 32\nmax_steps = {steps}\ncheckpoint_every = 20\neval_every = 10\nval_fraction = 0.25\nseed = 3\n",
        s(model),
        s(data)
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn show(id: i64) -> serde_json::Value {
    json(&stdout(&ok(cli(&[
        "runs",
        "show",
        &id.to_string(),
        "--json",
    ]))))
}

fn kill(signal: &str, pid: u64) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Training losses of each run as the catalog has them, via `compare --json`.
fn losses(ids: &[i64]) -> Vec<Vec<f64>> {
    let mut args = vec![
        "compare".to_string(),
        "--json".into(),
        "--points".into(),
        "100000".into(),
    ];
    args.extend(ids.iter().map(i64::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = json(&stdout(&ok(cli(&args))));
    v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            s["loss"]
                .as_array()
                .expect("loss")
                .iter()
                .map(|p| p["y"].as_f64().expect("y"))
                .collect()
        })
        .collect()
}

/// The largest difference between two loss curves, step by step.
fn largest_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Starts an attached `train --json` and reads up to the first step at or after `step`;
/// returns the parent process, the worker's pid and the run id.
fn train_until(config: &Path, step: u64) -> (std::process::Child, u64, i64) {
    let mut child = cli_command()
        .args(["train", "--config", s(config), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let first = json(&lines.next().expect("a first line").expect("line"));
    assert_eq!(first["event"], "worker", "{first}");
    let (pid, id) = (
        first["pid"].as_u64().expect("pid"),
        first["run"].as_i64().expect("run"),
    );
    for line in lines.by_ref() {
        let v = json(&line.expect("line"));
        if v["event"] == "step" && v["step"].as_u64().expect("step") >= step {
            break;
        }
        assert_ne!(
            v["event"], "status",
            "the run ended before step {step}: {v}"
        );
    }
    // Keep draining in the background so that the parent never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, pid, id)
}

#[test]
fn a_killed_worker_resumes_to_the_losses_of_an_uninterrupted_run() {
    let (dir, model, data) = setup();
    let steps = 1000;
    let reference = ok(cli(&[
        "train",
        "--config",
        s(&run_config(dir.path(), &model, &data, "whole", steps)),
        "--json",
    ]));
    let whole = json(stdout(&reference).lines().next().expect("line"))["run"]
        .as_i64()
        .expect("id");

    let config = run_config(dir.path(), &model, &data, "killed", steps);
    let (parent, worker, id) = train_until(&config, 50);
    // The worker records checkpoints in the catalog with its next batch of metrics (every
    // 100 ms); a release build can be at step 50 before the first one.
    let recorded = std::time::Instant::now();
    while show(id)["checkpoints"]
        .as_array()
        .is_none_or(|c| c.is_empty())
        && recorded.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill("-KILL", worker);
    let done = parent.wait_with_output().expect("wait");
    assert!(!done.status.success());
    assert!(stderr(&done).contains("signal 9"), "{}", stderr(&done));
    let run = show(id);
    assert_eq!(run["run"]["status"], "failed");
    assert!(
        run["run"]["error"]
            .as_str()
            .expect("error")
            .contains("SIGKILL"),
        "{run}"
    );
    assert!(
        !run["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .is_empty(),
        "{run}"
    );

    // A checkpoint being written when the worker died is a hidden temporary folder, which
    // resume must ignore: plant one with a half-written file.
    let partial = dir.path().join("killed/checkpoints/.step-00000390.tmp");
    std::fs::create_dir_all(&partial).expect("mkdir");
    std::fs::write(partial.join("params.safetensors"), b"\x10\x00\x00").expect("write");

    let resumed = ok(cli(&["resume", &id.to_string(), "--json"]));
    let first_step = stdout(&resumed)
        .lines()
        .map(json)
        .find(|v| v["event"] == "step")
        .expect("a step");
    assert!(
        first_step["step"].as_u64().expect("step") > 1,
        "resume continues from a checkpoint: {first_step}"
    );
    assert_eq!(show(id)["run"]["status"], "completed");
    let curves = losses(&[whole, id]);
    assert_eq!(curves[0].len(), steps);
    assert_eq!(curves[1].len(), steps, "every step has exactly one loss");
    let worst = largest_difference(&curves[0], &curves[1]);
    assert!(
        worst <= 1e-6,
        "the resumed run's losses differ by up to {worst}"
    );
}

#[test]
fn a_run_outlives_its_killed_parent() {
    let (dir, model, data) = setup();
    let config = run_config(dir.path(), &model, &data, "orphan", 300);
    let (mut parent, _worker, id) = train_until(&config, 5);
    kill("-KILL", u64::from(parent.id()));
    parent.wait().expect("wait");
    // A new client sees the run go on and complete with every step recorded.
    let deadline = Instant::now() + Duration::from_secs(180);
    let run = loop {
        let v = show(id);
        if v["run"]["status"] != "running" && v["run"]["status"] != "queued" {
            break v;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(run["run"]["status"], "completed", "{run}");
    assert_eq!(run["run"]["last_step"], 300);
    assert_eq!(losses(&[id])[0].len(), 300);
    assert!(dir
        .path()
        .join("orphan/adapter/adapter_model.safetensors")
        .is_file());
}

#[test]
fn runs_queue_and_the_catalog_commands_work_on_them() {
    let (dir, model, data) = setup();
    let start = |name: &str| -> i64 {
        let o = ok(cli(&[
            "train",
            "--config",
            s(&run_config(dir.path(), &model, &data, name, 30)),
            "--detach",
            "--name",
            name,
        ]));
        stdout(&o).trim().parse().expect("the run id")
    };
    let (a, b) = (start("first"), start("second"));
    // Following b from the catalog alone ends when it completes, after a.
    let watched = ok(cli(&["runs", "watch", &b.to_string(), "--json"]));
    let rows: Vec<serde_json::Value> = stdout(&watched).lines().map(json).collect();
    assert!(
        rows.iter().any(|r| r["step"] == 30),
        "watch sees the last step"
    );
    let (ra, rb) = (show(a)["run"].clone(), show(b)["run"].clone());
    assert_eq!(
        (&ra["status"], &rb["status"]),
        (&"completed".into(), &"completed".into())
    );
    assert!(
        rb["started_at"].as_f64() >= ra["finished_at"].as_f64(),
        "one run at a time per device: {ra} {rb}"
    );

    ok(cli(&["runs", "tag", &a.to_string(), "baseline", "r4"]));
    ok(cli(&["runs", "note", &a.to_string(), "lr 1e-2 is fine"]));
    let tagged = stdout(&ok(cli(&["runs", "list", "--json", "--tag", "baseline"])));
    assert_eq!(tagged.lines().count(), 1);
    assert_eq!(
        json(tagged.trim())["tags"],
        serde_json::json!(["baseline", "r4"])
    );
    let table = stdout(&ok(cli(&["runs", "list"])));
    assert!(
        table.contains("first") && table.contains("second") && table.contains("30/30"),
        "{table}"
    );
    assert!(stdout(&ok(cli(&["runs", "show", &a.to_string()]))).contains("lr 1e-2 is fine"));

    let chart = dir.path().join("compare.png");
    let o = ok(cli(&[
        "compare",
        &a.to_string(),
        &b.to_string(),
        "--out",
        s(&chart),
        "--x",
        "tokens",
    ]));
    assert!(
        stdout(&o).contains("the configs are identical") || stdout(&o).contains("out:"),
        "{}",
        stdout(&o)
    );
    assert!(std::fs::read(&chart)
        .expect("chart")
        .starts_with(b"\x89PNG"));
    let bad = cli(&["compare", &a.to_string(), "--x", "furlongs"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("furlongs"),
        "{}",
        stderr(&bad)
    );

    ok(cli(&["runs", "delete", &a.to_string()]));
    assert!(
        !dir.path().join("first").exists(),
        "the run folder goes with it"
    );
    let missing = cli(&["runs", "show", &a.to_string()]);
    assert!(
        !missing.status.success() && stderr(&missing).contains(&format!("no run {a}")),
        "{}",
        stderr(&missing)
    );
}

/// Crash safety: the worker is SIGKILLed at 20 pseudo-random moments (mid-step, mid-checkpoint
/// — checkpoints are written every 2 steps — or mid-evaluation), resumed after each. After
/// every kill the catalog opens with the run marked failed (never left `running`), every
/// checkpoint folder is complete (it loads), and the run finally completes with exactly one loss
/// per step, equal to an uninterrupted run's. Exports killed part-way leave either nothing or
/// complete files.
#[test]
fn twenty_kills_at_random_moments_lose_nothing() {
    let (dir, model, data) = setup();
    let steps = 1200;
    let write = |name: &str| {
        let path = run_config(dir.path(), &model, &data, name, steps);
        let text = std::fs::read_to_string(&path).expect("config").replace(
            "checkpoint_every = 20",
            "checkpoint_every = 2\nkeep_checkpoints = 3",
        );
        std::fs::write(&path, text).expect("config");
        path
    };
    let whole = json(
        stdout(&ok(cli(&[
            "train",
            "--config",
            s(&write("whole")),
            "--json",
        ])))
        .lines()
        .next()
        .expect("line"),
    )["run"]
        .as_i64()
        .expect("id");
    let config = write("crashy");
    let mut rng = peft_studio_engine::ops::SplitMix64::new(20);
    let mut id: Option<i64> = None;
    let mut kills = 0;
    while kills < 20 {
        let args: Vec<String> = match id {
            None => vec![
                "train".into(),
                "--config".into(),
                s(&config).into(),
                "--json".into(),
            ],
            Some(id) => vec!["resume".into(), id.to_string(), "--json".into()],
        };
        let mut child = cli_command()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = json(&lines.next().expect("first line").expect("line"));
        let worker = first["pid"].as_u64().expect("pid");
        id = Some(first["run"].as_i64().expect("run"));
        // Anywhere from model loading to several steps in: after 0 to 39 of the run's lines
        // (one per step or evaluation), then up to 20 ms more. Counted in lines, not time, so
        // that the run cannot finish before the twentieth kill on a fast build.
        let wait_lines = (rng.next_f64() * 40.0) as usize;
        let _ = lines.by_ref().take(wait_lines).count();
        std::thread::sleep(Duration::from_micros((rng.next_f64() * 20_000.0) as u64));
        std::thread::spawn(move || lines.for_each(drop));
        let finished = child.try_wait().expect("wait").is_some();
        if !finished {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &worker.to_string()])
                .status();
            kills += 1;
        }
        let _ = child.wait();
        let run = show(id.expect("id"));
        let status = run["run"]["status"].as_str().expect("status").to_string();
        assert_ne!(
            status, "running",
            "a killed run is never left running: {run}"
        );
        if status == "completed" {
            break;
        }
        // Every checkpoint folder the run lists is complete: it loads.
        let ckpts = dir.path().join("crashy/checkpoints");
        for entry in std::fs::read_dir(&ckpts).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                peft_studio_engine::train::checkpoint::load(&entry.path())
                    .unwrap_or_else(|e| panic!("after kill {kills}: {name} is incomplete: {e}"));
            }
        }
    }
    assert_eq!(kills, 20, "the run completed before the twentieth kill");
    println!("worker killed {kills} times");
    let id = id.expect("id");
    if show(id)["run"]["status"] != "completed" {
        ok(cli(&["resume", &id.to_string(), "--json"]));
    }
    assert_eq!(show(id)["run"]["status"], "completed");
    let curves = losses(&[whole, id]);
    assert_eq!(curves[1].len(), steps, "every step has exactly one loss");
    let worst = largest_difference(&curves[0], &curves[1]);
    assert!(
        worst <= 1e-6,
        "after {kills} kills the losses differ by up to {worst}"
    );

    // Exports killed part-way: nothing, or only complete files.
    let run_dir = dir.path().join("crashy");
    for k in 0..5 {
        let out = dir.path().join(format!("export-{k}"));
        let mut child = cli_command()
            .args([
                "export",
                "--run",
                s(&run_dir),
                "--format",
                "merged",
                "--out",
                s(&out),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(20 + 40 * k));
        let _ = child.kill();
        let _ = child.wait();
        for entry in std::fs::read_dir(&out).into_iter().flatten().flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.name.tmp-PID` is a write cut short: never read, never renamed into place.
            if name.starts_with('.') {
                continue;
            }
            if name.ends_with(".safetensors") {
                peft_studio_engine::model::load::read_safetensors(&p)
                    .unwrap_or_else(|e| panic!("{name} is incomplete: {e}"));
            } else if name.ends_with(".json") {
                let _: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                        .unwrap_or_else(|e| panic!("{name} is incomplete: {e}"));
            }
        }
    }
}

/// Mounts a tmpfs of `size` at `dir`; false where this process may not mount (not root, or a
/// container without the capability), which the caller reports.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).expect("mount point");
    std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            s(dir),
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

/// A full disk: a run whose folder fills up while checkpointing fails with the cause named,
/// keeps only complete checkpoints, and resumes once there is room; an export onto a full disk
/// fails with the cause named and leaves nothing behind. (Needs permission to mount a tmpfs.)
#[test]
fn a_full_disk_fails_cleanly_and_loses_nothing() {
    let (dir, model, data) = setup();
    let disk = dir.path().join("disk");
    if !mount_tmpfs(&disk, "160k") {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&disk);
    let config = run_config(dir.path(), &model, &data, "full", 400);
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            "out = \"full\"",
            &format!("out = {:?}", s(&disk.join("run"))),
        )
        .replace(
            "checkpoint_every = 20",
            "checkpoint_every = 5\nkeep_checkpoints = 0",
        );
    std::fs::write(&config, text).expect("config");
    let o = cli(&["train", "--config", s(&config), "--json"]);
    assert!(!o.status.success(), "the run cannot fit: {}", stderr(&o));
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    let id = json(stdout(&o).lines().next().expect("line"))["run"]
        .as_i64()
        .expect("id");
    assert_eq!(show(id)["run"]["status"], "failed");
    let ckpts = disk.join("run/checkpoints");
    let complete = peft_studio_engine::train::checkpoint::list(&ckpts);
    assert!(!complete.is_empty(), "some checkpoints fitted");
    for (_, c) in &complete {
        peft_studio_engine::train::checkpoint::load(c).expect("a listed checkpoint loads");
    }
    // Room again: the run resumes from its newest checkpoint and completes.
    let _ = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m", s(&disk)])
        .status();
    ok(cli(&["resume", &id.to_string(), "--json"]));
    assert_eq!(show(id)["run"]["status"], "completed");

    // An export onto a full disk.
    let small = dir.path().join("small");
    if mount_tmpfs(&small, "64k") {
        let _unmount_small = Unmount(&small);
        let out = small.join("merged");
        let o = cli(&[
            "export",
            "--run",
            s(&disk.join("run")),
            "--format",
            "merged",
            "--out",
            s(&out),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
        let left: Vec<_> = std::fs::read_dir(&small).expect("dir").flatten().collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }
}
