//! Secret material of the embedded default (admin token, subject-hash key, signing
//! seeds): taken from config when set, else loaded from or generated into the data
//! directory with owner-only permissions.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

/// A freshly generated random token: 32 bytes, base64url without padding.
pub fn random_token() -> SecretString {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("operating system random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into()
}

/// Where a secret came from, so start-up can announce a generated admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Given in configuration or the environment.
    Configured,
    /// Read from a file generated on an earlier start.
    Loaded,
    /// Generated now and written to the data directory.
    Generated,
}

/// Returns `configured` if set, else the secret in `<data_dir>/<file>`, creating it
/// (mode 0600) with a random token when missing.
pub fn configured_or_file(
    configured: Option<&SecretString>,
    data_dir: &Path,
    file: &str,
) -> anyhow::Result<(SecretString, Origin)> {
    if let Some(secret) = configured {
        return Ok((secret.clone(), Origin::Configured));
    }
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(content) if !content.trim().is_empty() => {
            return Ok((content.trim().to_string().into(), Origin::Loaded));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = random_token();
    write_private(&path, secret.expose_secret())?;
    Ok((secret, Origin::Generated))
}

/// Writes `content` to `path` readable by the owner only, creating parent directories.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        crate::private_files::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = crate::private_files::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// Tells the operator about an admin token generated into `path`: the token
/// itself only when stdout is an interactive terminal (once; the file has it from
/// then on); otherwise just where the file is, since a stdout that is not a
/// terminal (a container's, a service manager's) ends up in a log collector.
pub fn announce_generated_admin_token(token: &SecretString, path: &Path) {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        announce(token, path, Some(&mut stdout.lock()));
    } else {
        announce(token, path, None);
    }
}

fn announce(token: &SecretString, path: &Path, terminal: Option<&mut dyn Write>) {
    match terminal {
        Some(out) => {
            let _ = writeln!(
                out,
                "custodia: generated the admin token (all scopes), saved to {}:\n\n    {}\n",
                path.display(),
                token.expose_secret()
            );
        }
        None => tracing::info!(
            path = %path.display(),
            "generated the admin token (all scopes); it is in this file only"
        ),
    }
}

/// Path of the admin token file in the embedded default.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_loads_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, origin) = configured_or_file(None, dir.path(), "admin.token").unwrap();
        assert_eq!(origin, Origin::Generated);
        let (b, origin) = configured_or_file(None, dir.path(), "admin.token").unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("admin.token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let configured: SecretString = "given".to_string().into();
        let (c, origin) = configured_or_file(Some(&configured), dir.path(), "admin.token").unwrap();
        assert_eq!((c.expose_secret(), origin), ("given", Origin::Configured));
    }

    #[test]
    fn a_generated_token_is_shown_on_a_terminal_only() {
        let token: SecretString = "generated-token-0123456789".to_string().into();
        let path = Path::new("/srv/custodia/admin.token");
        let mut terminal = Vec::new();
        announce(&token, path, Some(&mut terminal));
        let shown = String::from_utf8(terminal).unwrap();
        assert!(shown.contains("generated-token-0123456789"), "{shown}");
        assert!(shown.contains("/srv/custodia/admin.token"), "{shown}");
        // Without a terminal nothing is written but a log line without the token
        // (the binary's test checks the process's whole output).
        announce(&token, path, None);
    }
}
