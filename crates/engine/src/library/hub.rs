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
    EngineError::config("hub", message)
}

/// Downloads the model files of `repo` at `revision`; returns the snapshot folder.
pub fn download(
    repo: &str,
    revision: &str,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_error(repo, e))?;
    let handle = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = handle.info().map_err(|e| hub_error(repo, e))?;
    let files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(EngineError::config(
            "hub",
            format!("`{repo}` has no safetensors weights; pickled .bin weights are not loaded because they can run code"),
        ));
    }
    let mut snapshot = None;
    for file in &files {
        // hf-hub panics on a few malformed server answers; turn those into errors.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.download_with_progress(file, Adapter(&mut *progress))
        }))
        .map_err(|_| {
            EngineError::config("hub", format!("malformed answer from the hub for `{file}`"))
        })?
        .map_err(|e| hub_error(repo, e))?;
        snapshot = got.parent().map(PathBuf::from);
    }
    snapshot.ok_or_else(|| EngineError::config("hub", format!("`{repo}` lists no files")))
}
