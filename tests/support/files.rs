//! Permissions of what a server writes to its data directory.

/// Every directory under `root` (itself included) and every file in them, with
/// their modes; panics unless directories are 0700 and files 0600 (the data
/// directory holds personal data and secrets). Symbolic links are skipped.
#[cfg(unix)]
pub fn assert_owner_only(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        // A live server renames and removes files (journal segments, -wal): a
        // file gone meanwhile is skipped.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "directory {} is {mode:o}", path.display());
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            assert_eq!(mode, 0o600, "file {} is {mode:o}", path.display());
        }
        found.push(path);
    }
    found
}
