//! Downloading a model from the Hugging Face hub into the standard hub cache
//! (`$HF_HOME/hub/models--org--name/…`), so Python tools reuse the same files.
//! Honours `HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN`; interrupted files resume.

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use crate::error::{EngineError, Result};

/// What a download reports as it goes.
pub trait DownloadProgress {
    /// A file of `size` bytes starts (or resumes).
    fn file(&mut self, name: &str, size: usize);
    /// `bytes` more arrived.
    fn advance(&mut self, bytes: usize);
}

struct Adapter<'a>(&'a mut dyn DownloadProgress);

impl hf_hub::api::Progress for Adapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.file(filename, size);
    }
    fn update(&mut self, size: usize) {
        self.0.advance(size);
    }
    fn finish(&mut self) {}
}

/// The files of a repository the studio needs: config, tokenizer, safetensors weights.
fn wanted(file: &str) -> bool {
    !file.contains('/')
        && (file.ends_with(".safetensors")
            || file.ends_with(".json")
            || file == "tokenizer.model"
            || file.ends_with(".jinja"))
}

fn hub_error(repo: &str, e: ApiError) -> EngineError {
    let message = match &e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::Status(401, _) | ureq::Error::Status(403, _) => format!(
                "`{repo}` is gated or private and needs an access token: accept its licence on the hub, then set HF_TOKEN"
            ),
            ureq::Error::Status(404, _) => format!("`{repo}` (or this revision) does not exist on the hub"),
            ureq::Error::Status(code, _) => format!("the hub answered HTTP {code} for `{repo}`"),
            ureq::Error::Transport(t) => format!(
                "the hub is unreachable ({t}); import a local model folder or a GGUF file instead (`models import PATH`)"
            ),
        },
        other => format!("download of `{repo}` failed: {other}"),
    };
    EngineError::Hub(message)
}

/// Downloads the files of a repository that `wanted` accepts; returns their local paths.
fn fetch(
    repo: &str,
    revision: &str,
    kind: RepoType,
    wanted: impl Fn(&str) -> bool,
    progress: &mut dyn DownloadProgress,
) -> Result<Vec<PathBuf>> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_error(repo, e))?;
    let handle = api.repo(Repo::with_revision(
        repo.to_string(),
        kind,
        revision.to_string(),
    ));
    let info = handle.info().map_err(|e| hub_error(repo, e))?;
    let mut paths = Vec::new();
    for file in info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| wanted(f))
    {
        if file.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(EngineError::Hub(format!(
                "`{repo}` lists an unsafe file name `{file}`"
            )));
        }
        // hf-hub panics on a few malformed server answers; turn those into errors.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.download_with_progress(file, Adapter(&mut *progress))
        }))
        .map_err(|_| EngineError::Hub(format!("malformed answer from the hub for `{file}`")))?
        .map_err(|e| hub_error(repo, e))?;
        paths.push(got);
    }
    Ok(paths)
}

/// Downloads the model files of `repo` at `revision`; returns the snapshot folder.
pub fn download(
    repo: &str,
    revision: &str,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    let has_safetensors = |paths: &[PathBuf]| {
        paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "safetensors"))
    };
    let paths = fetch(repo, revision, RepoType::Model, wanted, progress)?;
    if !has_safetensors(&paths) {
        return Err(EngineError::Hub(format!(
            "`{repo}` has no safetensors weights; pickled .bin weights are not loaded because they can run code"
        )));
    }
    paths
        .first()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .ok_or_else(|| EngineError::Hub(format!("`{repo}` lists no files")))
}

/// Downloads the data files (Parquet, JSONL, CSV, TSV) of a dataset repository at `revision`
/// into the hub cache; returns them in the repository's order.
pub fn download_dataset(
    repo: &str,
    revision: &str,
    progress: &mut dyn DownloadProgress,
) -> Result<Vec<PathBuf>> {
    let data_file = |f: &str| {
        [".parquet", ".jsonl", ".csv", ".tsv"]
            .iter()
            .any(|ext| f.ends_with(ext))
    };
    let paths = fetch(repo, revision, RepoType::Dataset, data_file, progress)?;
    if paths.is_empty() {
        return Err(EngineError::Hub(format!(
            "dataset `{repo}` has no Parquet, JSONL, CSV or TSV files"
        )));
    }
    Ok(paths)
}
