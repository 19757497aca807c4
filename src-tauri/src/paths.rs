//! Where the webview may ask the studio to write. Reads take any path the user typed or
//! picked (they change nothing); a write destination must be an absolute path without `..`,
//! outside the system's own folders, and of the kind the command
//! writes (`extensions`), so that no call can make the studio overwrite a file it has no
//! business writing, whatever the page runs.

use std::path::{Component, Path, PathBuf};

use crate::error::CommandError;

/// Folders of the operating system no export belongs in.
const SYSTEM_ROOTS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr",
    "/var", "/System", "/Library",
];

/// Checks the destination `path` of a write (missing folders on the way are made by the
/// export); `extensions` (lowercase, without the dot) are the file kinds allowed, or empty for
/// a folder.
pub fn write_destination(path: &Path, extensions: &[&str]) -> Result<PathBuf, CommandError> {
    let refuse = |why: &str| {
        Err(CommandError::with_hint(
            format!("`{}` {why}", path.display()),
            "choose the destination with Browse…, or type a full path in your own folders",
        ))
    };
    if path.as_os_str().is_empty() || path.is_relative() {
        return refuse("is not an absolute path");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return refuse("contains `..`");
    }
    if path.parent().is_none() || SYSTEM_ROOTS.iter().any(|r| path.starts_with(r)) {
        return refuse("is in a system folder");
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
