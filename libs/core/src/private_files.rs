//! Owner-only files and directories. The data directory holds personal data in
//! clear (SQLite databases and their -wal, -shm and journal files, read-event
//! journals, export packages) and secrets (tokens, keys): it is 0700 and every
//! file custodia creates in it 0600, whatever the umask of the shell or
//! container that started the process. Existing files and directories that
//! other users can read are tightened at start, with a warning naming each.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::Config;

/// Mode of the directories custodia creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files custodia creates.
pub const FILE_MODE: u32 = 0o600;

/// Sets the process umask to 0o077, so that what libraries create on their own
/// (SQLite's files, temporary files) is owner-only too. The binary calls it first
/// thing; the explicit modes below hold without it (tests, embedders).
pub fn restrict_umask() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left
/// as they are; [`tighten`] deals with those).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)
}

/// [`create_dir_all`] for async callers.
pub async fn create_dir_all_async(dir: &Path) -> io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir).await
}

/// Open options whose newly created files are 0600.
pub fn file_options() -> fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// [`file_options`] for async callers.
pub fn file_options_async() -> tokio::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = tokio::fs::OpenOptions::new();
    #[cfg(unix)]
    options.mode(FILE_MODE);
    options
}

/// Creates `path` empty with mode 0600 unless it exists. SQLite gives a
/// database's -wal, -shm and rollback journal the mode of the database file, so
/// a database created through this keeps all of them owner-only.
pub fn create_file_if_missing(path: &Path) -> io::Result<()> {
    match file_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The directories where custodia keeps personal data or secrets: creates the
/// data directory (0700) when the embedded default uses it, then [`tighten`]s
/// each that exists. Tightening is what a GDPR store expects; an operator who
/// wants to share a file must copy it out.
pub fn secure_data_dirs(config: &Config) -> io::Result<()> {
    if config.is_embedded() {
        create_dir_all(&config.data_dir)?;
    }
    let mut roots: Vec<&Path> = vec![&config.data_dir];
    for dir in [
        &config.dsar.export_dir,
        &config.audit.read_event_journal_dir,
    ]
    .into_iter()
    .flatten()
    {
        if !roots.iter().any(|r| dir.starts_with(r)) {
            roots.push(dir);
        }
    }
    for root in roots {
        if fs::symlink_metadata(root).is_ok() {
            tighten(root);
        }
    }
    Ok(())
}

/// Removes the group and other permission bits of `root` and of everything under
/// it (symbolic links under it are neither followed nor changed; `root` itself
/// may be one), logging a warning that names each path changed. Returns the
/// paths changed. A path that cannot be changed (not ours) is logged and left as
/// it is: start-up goes on.
pub fn tighten(root: &Path) -> Vec<PathBuf> {
    let mut changed = Vec::new();
    // A data directory configured as a link to the real one (/var/lib/custodia ->
    // /srv/custodia) is the directory it points to.
    let root = match fs::symlink_metadata(root) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
        }
        _ => root.to_path_buf(),
    };
    #[cfg(unix)]
    tighten_tree(&root, &mut changed);
    changed
}

#[cfg(unix)]
fn tighten_tree(path: &Path, changed: &mut Vec<PathBuf>) {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the permissions of a path in the data directory");
            return;
        }
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let tightened = mode & 0o700;
        match fs::set_permissions(path, fs::Permissions::from_mode(tightened)) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    from = %format!("{mode:o}"),
                    to = %format!("{tightened:o}"),
                    "readable by other users, in a directory of personal data and secrets: permissions tightened"
                );
                changed.push(path.to_path_buf());
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:o}"),
                error = %e,
                "readable by other users, in a directory of personal data and secrets, and its permissions could not be tightened"
            ),
        }
    }
    if meta.is_dir() {
        match fs::read_dir(path) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    tighten_tree(&entry.path(), changed);
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot list a directory of the data directory")
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_directories_and_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let file = nested.join("x.db");
        create_file_if_missing(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        // An existing file is left alone (its content too).
        fs::write(&file, b"kept").unwrap();
        create_file_if_missing(&file).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"kept");
        let other = nested.join("y");
        file_options()
            .write(true)
            .create(true)
            .open(&other)
            .unwrap();
        assert_eq!(mode(&other), 0o600);
    }

    #[test]
    fn tighten_removes_group_and_other_bits_and_names_each_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let open = root.join("consent.db");
        fs::write(&open, b"").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        let sub = root.join("dsar-exports");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o750)).unwrap();
        let deep = sub.join("r.zip");
        fs::write(&deep, b"").unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o664)).unwrap();
        let private = root.join("admin.token");
        fs::write(&private, b"").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        // A link is not followed: what it points to is not the data directory's.
        let outside = dir.path().join("outside");
        fs::write(&outside, b"").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let mut changed = tighten(&root);
        changed.sort();
        let mut expected = vec![root.clone(), open.clone(), sub.clone(), deep.clone()];
        expected.sort();
        assert_eq!(changed, expected);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&open), 0o600);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&deep), 0o600);
        assert_eq!(mode(&private), 0o600);
        assert_eq!(mode(&outside), 0o644);
        // Nothing left to do the second time.
        assert!(tighten(&root).is_empty());

        // A data directory given as a link is the directory it points to.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("data-link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let changed = tighten(&link);
        assert_eq!(changed, vec![fs::canonicalize(&open).unwrap()]);
        assert_eq!(mode(&open), 0o600);
    }

    #[test]
    fn secure_data_dirs_creates_the_embedded_data_dir_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("new/data"),
            ..Config::default()
        };
        secure_data_dirs(&config).unwrap();
        assert_eq!(mode(&config.data_dir), 0o700);
    }
}
