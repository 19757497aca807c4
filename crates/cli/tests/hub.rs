//! `models download` against a local HTTP server standing in for the hub (`HF_ENDPOINT`):
//! real HTTP, real files, an interrupted transfer that resumes, a gated repository.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};

struct FakeHub {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_hub(root: &Path, extra: &[&str]) -> FakeHub {
    let log = root.join("requests.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_hub.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(root.join("repos"))
        .arg(&log)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the fake hub");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    FakeHub {
        child,
        url: format!("http://127.0.0.1:{}", port.trim()),
        log,
    }
}

fn cli(dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft-studio-cli"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", dir.join("hf"))
        .env("PEFT_STUDIO_HOME", dir.join("studio"))
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn download_resumes_after_an_interrupted_transfer_into_the_hub_cache() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repos/org/tiny");
    write_tiny_model(&repo, &TinySpec::default()).unwrap();
    let weights = std::fs::read(repo.join("model.safetensors")).unwrap();
    let cut = weights.len() / 3;
    let hub = fake_hub(dir.path(), &["--cut", &format!("model.safetensors:{cut}")]);

    let first = cli(dir.path(), &hub.url, &["models", "download", "org/tiny"]);
    assert!(
        !first.status.success(),
        "the cut transfer fails: {}",
        text(&first)
    );
    let blobs = dir.path().join("hf/hub/models--org--tiny/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(partial.len(), 1, "the partial file is kept for resuming");

    let second = cli(dir.path(), &hub.url, &["models", "download", "org/tiny"]);
    assert!(second.status.success(), "{}", text(&second));
    let log = std::fs::read_to_string(&hub.log).unwrap();
    assert!(
        log.contains(&format!("model.safetensors range=bytes={cut}-")),
        "the second transfer resumes where the first stopped:\n{log}"
    );
    let snapshot = dir
        .path()
        .join("hf/hub/models--org--tiny/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    for f in ["config.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(snapshot.join(f)).unwrap(),
            std::fs::read(repo.join(f)).unwrap()
        );
    }
    let refs =
        std::fs::read_to_string(dir.path().join("hf/hub/models--org--tiny/refs/main")).unwrap();
    assert_eq!(refs.trim(), "0123456789abcdef0123456789abcdef01234567");

    let list = cli(dir.path(), &hub.url, &["models", "list"]);
    assert!(
        text(&list).contains("tiny") && text(&list).contains("hub:org/tiny@main"),
        "{}",
        text(&list)
    );
}

#[test]
fn gated_missing_and_unreachable_repositories_explain_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("repos/org/secret"), &TinySpec::default()).unwrap();
    let hub = fake_hub(dir.path(), &["--gated", "org/secret"]);

    let gated = cli(dir.path(), &hub.url, &["models", "download", "org/secret"]);
    assert!(!gated.status.success());
    assert!(
        text(&gated).contains("gated") && text(&gated).contains("HF_TOKEN"),
        "{}",
        text(&gated)
    );

    let missing = cli(dir.path(), &hub.url, &["models", "download", "org/nothing"]);
    assert!(
        text(&missing).contains("does not exist"),
        "{}",
        text(&missing)
    );

    let offline = cli(
        dir.path(),
        "http://127.0.0.1:9",
        &["models", "download", "org/secret"],
    );
    assert!(!offline.status.success());
    let said = text(&offline);
    assert!(
        said.contains("unreachable") && said.contains("models import"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn dataset_parquet_files_download_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repos/datasets/org/chats/data");
    std::fs::create_dir_all(&repo).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures/reference/data/chat.parquet");
    std::fs::copy(&fixture, repo.join("train-00000-of-00001.parquet")).unwrap();
    std::fs::write(repo.join("../README.md"), "# chats").unwrap();
    let hub = fake_hub(dir.path(), &[]);

    let got = cli(dir.path(), &hub.url, &["data", "download", "org/chats"]);
    assert!(got.status.success(), "{}", text(&got));
    let stdout = String::from_utf8_lossy(&got.stdout);
    let paths: Vec<&str> = stdout.lines().collect();
    assert_eq!(paths.len(), 1, "only data files: {stdout}");
    assert!(
        paths[0].contains("datasets--org--chats/snapshots/")
            && paths[0].ends_with("data/train-00000-of-00001.parquet")
    );
    assert_eq!(
        std::fs::read(paths[0]).unwrap(),
        std::fs::read(&fixture).unwrap()
    );

    let check = cli(dir.path(), &hub.url, &["data", "check", paths[0]]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("messages format, 2 usable, 0 rejected"),
        "{}",
        text(&check)
    );
}
