//! Where the webview may ask the studio to write, and what it may ask it to read. A write
//! destination must be an absolute path without `..`, outside the system's own folders, and of
//! the kind the command writes (`extensions`), so that no call can make the studio overwrite a
//! file it has no business writing, whatever the page runs. A read source (a dataset, a model,
//! an adapter) must likewise be absolute, without `..`, outside the system's folders and the
//! usual credential folders (`.ssh`, `.aws`, …), and of the kind the command reads, so that
//! no call can have the studio show the page a key or a system file as "dataset lines".

use std::path::{Component, Path, PathBuf};

use crate::error::CommandError;

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

/// Checks the source `path` of a read before anything is opened.
pub fn read_source(path: &Path, kind: Source) -> Result<PathBuf, CommandError> {
    let refuse = |why: &str| {
        refusal(
            path,
            why,
            "choose the file with Browse…, or type a full path in your own folders",
        )
    };
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
pub fn write_destination(path: &Path, extensions: &[&str]) -> Result<PathBuf, CommandError> {
    let refuse = |why: &str| {
        refusal(
            path,
            why,
            "choose the destination with Browse…, or type a full path in your own folders",
        )
    };
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
    Ok(path.to_path_buf())
}
