//! Where the webview may ask the studio to write, and what it may ask it to read. A write
//! destination must be an absolute path without `..`, outside the system's own folders, and of
//! the kind the command writes (`extensions`), so that no call can make the studio overwrite a
//! file it has no business writing, whatever the page runs. A read source (a dataset, a model,
//! an adapter) must likewise be absolute, without `..`, outside the system's folders and the
//! usual credential folders (`.ssh`, `.aws`, …), and of the kind the command reads, so that
//! no call can have the studio show the page a key or a system file as "dataset lines".
//! Both must also lie where the user chose ([`Chosen`]): in a file or folder picked in a
//! native dialog that the studio opened itself, in the studio home, or in a folder the user
//! trusts (`PEFT_STUDIO_TRUSTED_FOLDERS`), so a page cannot name a path the user never chose.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use peft_studio_app::studio_home;

use crate::error::CommandError;

/// The environment variable listing folders (`:`-separated, as `PATH`) whose files the forms
/// may name by typing, without a dialog.
pub const TRUSTED_FOLDERS: &str = "PEFT_STUDIO_TRUSTED_FOLDERS";

/// The files and folders the user picked in the studio's native dialogs this session, or
/// dropped on its window. Only `choose_path` (after the dialog closes) and the window
/// system's drop event add to it: the page cannot grant itself a path.
#[derive(Debug, Default)]
pub struct Chosen(Mutex<Vec<PathBuf>>);

impl Chosen {
    /// Records a path the user picked: the file itself, or the folder and what is in it.
    pub fn grant(&self, path: PathBuf) {
        let mut chosen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !chosen.contains(&path) {
            chosen.push(path);
        }
    }

    /// Whether `path` is, or lies in, something chosen, the studio home or a trusted folder.
    fn covers(&self, path: &Path) -> bool {
        let trusted = std::env::var_os(TRUSTED_FOLDERS)
            .map(|list| std::env::split_paths(&list).collect::<Vec<_>>())
            .unwrap_or_default();
        let chosen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(studio_home())
            .chain(trusted)
            .chain(chosen.iter().cloned())
            .any(|root| root.is_absolute() && path.starts_with(root))
    }
}

/// Folders of the operating system no export belongs in.
const SYSTEM_ROOTS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr",
    "/var", "/System", "/Library",
];

/// Folders under a home directory that hold credentials, never training data.
const CREDENTIAL_FOLDERS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".docker",
    ".kube",
    ".password-store",
    ".netrc",
    ".git-credentials",
    ".config/gcloud",
    ".local/share/keyrings",
];

/// What a read expects at its path.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A file with one of these extensions (lowercase, without the dot).
    File(&'static [&'static str]),
    /// A folder, or a file with one of these extensions.
    FolderOr(&'static [&'static str]),
}

/// Dataset files the readers take.
pub const DATASET: Source = Source::File(&[
    "jsonl", "ndjson", "json", "csv", "tsv", "parquet", "txt", "md", "text",
]);
/// A Hugging Face model folder or a GGUF file.
pub const MODEL: Source = Source::FolderOr(&["gguf"]);
/// A PEFT or adapters-library folder, or a GGUF LoRA file.
pub const ADAPTER: Source = Source::FolderOr(&["gguf"]);

/// A refusal of `path` for `why`, with `hint`.
fn refusal<T>(path: &Path, why: &str, hint: &str) -> Result<T, CommandError> {
    Err(CommandError::with_hint(
        format!("`{}` {why}", path.display()),
        hint,
    ))
}

/// Why `path` may be neither read nor written, if it may not: relative, with `..`, or in a
/// system folder.
fn outside_the_users_folders(path: &Path) -> Option<&'static str> {
    if path.as_os_str().is_empty() || path.is_relative() {
        Some("is not an absolute path")
    } else if path.components().any(|c| matches!(c, Component::ParentDir)) {
        Some("contains `..`")
    } else if path.parent().is_none() || SYSTEM_ROOTS.iter().any(|r| path.starts_with(r)) {
        Some("is in a system folder")
    } else {
        None
    }
}

/// The refusal of a path the user never chose.
const NOT_CHOSEN: &str = "was not chosen in a dialog";
/// What to do about a refused path.
const CHOOSE_HINT: &str = "choose it with Browse… (the dialog opens at the typed path), or \
    list its folder in PEFT_STUDIO_TRUSTED_FOLDERS to type paths there";

/// Checks the source `path` of a read before anything is opened (nothing about a path the
/// user did not choose is looked up, not even whether it exists).
pub fn read_source(path: &Path, kind: Source, chosen: &Chosen) -> Result<PathBuf, CommandError> {
    let refuse = |why: &str| refusal(path, why, CHOOSE_HINT);
    if let Some(why) = outside_the_users_folders(path) {
        return refuse(why);
    }
    let in_credentials = path.ancestors().any(|a| {
        CREDENTIAL_FOLDERS.iter().any(|c| {
            a.ends_with(c)
                || a.file_name()
                    .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case(c))
        })
    });
    if in_credentials {
        return refuse("is in a folder of credentials");
    }
    if !chosen.covers(path) {
        return refuse(NOT_CHOSEN);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (folder_ok, extensions) = match kind {
        Source::File(e) => (false, e),
        Source::FolderOr(e) => (true, e),
    };
    if path.is_dir() {
        return if folder_ok {
            Ok(path.to_path_buf())
        } else {
            refuse("is a folder, not a file")
        };
    }
    if !extensions.contains(&ext.as_str()) {
        let kinds = extensions.join(", .");
        return refuse(&if folder_ok {
            format!("is neither a folder nor a .{kinds} file")
        } else {
            format!("must be a .{kinds} file")
        });
    }
    Ok(path.to_path_buf())
}

/// Checks the destination `path` of a write (missing folders on the way are made by the
/// export); `extensions` (lowercase, without the dot) are the file kinds allowed, or empty for
/// a folder.
pub fn write_destination(
    path: &Path,
    extensions: &[&str],
    chosen: &Chosen,
) -> Result<PathBuf, CommandError> {
    let refuse = |why: &str| refusal(path, why, CHOOSE_HINT);
    if let Some(why) = outside_the_users_folders(path) {
        return refuse(why);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if !extensions.is_empty() && !extensions.contains(&ext.as_str()) {
        return refuse(&format!("must end in .{}", extensions.join(" or .")));
    }
    if !chosen.covers(path) {
        return refuse(NOT_CHOSEN);
    }
    Ok(path.to_path_buf())
}
