//! What `custodia serve` does to its files and says at start, seen from outside
//! the process (issue 24, findings 4 and 7): the data directory 0700 and its
//! files 0600, existing files tightened with a warning, the generated admin token
//! kept out of a stdout that is not a terminal, a warning for plaintext beyond
//! loopback.

#![cfg(unix)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use custodia_core::ServiceName;
use custodia_tests::assert_owner_only;

use crate::crash::{connect_service, free_port};

/// The binary serving consent over `data_dir` on `listen`, its stdout and stderr
/// going to files (pipes: not a terminal).
struct Served {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Served {
    async fn start(logs: &Path, data_dir: &Path, listen: &str, port: u16) -> Self {
        let stdout = logs.join("stdout");
        let stderr = logs.join("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_custodia"))
            .args(["serve", "consent", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env_remove("CUSTODIA_ADMIN_TOKEN")
            .env_remove("CUSTODIA_CONFIG")
            .env_remove("CUSTODIA_DATABASE_URL")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("custodia starts");
        connect_service(port, ServiceName::Consent).await;
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Stops the process; returns what it wrote to stdout and stderr.
    fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (
            std::fs::read_to_string(&self.stdout).unwrap(),
            std::fs::read_to_string(&self.stderr).unwrap(),
        )
    }
}

#[tokio::test]
async fn the_generated_admin_token_stays_out_of_a_stdout_that_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let served = Served::start(dir.path(), &data_dir, &format!("127.0.0.1:{port}"), port).await;
    let token_file = data_dir.join("admin.token");
    let token = std::fs::read_to_string(&token_file).expect("the token file is written");
    let token = token.trim();
    assert_eq!(token.len(), 43);
    // The umask and the explicit modes: nothing the process made is readable by others.
    assert_owner_only(&data_dir);
    let (stdout, stderr) = served.stop();
    assert!(!stdout.contains(token), "token on stdout:\n{stdout}");
    assert!(!stderr.contains(token), "token on stderr:\n{stderr}");
    // Where to find it is said instead.
    assert!(
        stdout.contains(&token_file.display().to_string()),
        "{stdout}"
    );
    // On loopback, no warning about plaintext.
    assert!(!stdout.contains("TLS is not configured"), "{stdout}");
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let served = Served::start(dir.path(), &dir.path().join("data"), &listen, port).await;
    let (stdout, _) = served.stop();
    let warning = stdout
        .lines()
        .find(|l| l.contains("TLS is not configured"))
        .unwrap_or_else(|| panic!("no warning about plaintext:\n{stdout}"));
    assert!(
        warning.contains("WARN") && warning.contains(&format!("addr={listen}")),
        "{warning}"
    );
}

#[tokio::test]
async fn files_already_in_the_data_dir_are_tightened_with_a_warning_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let readable = data_dir.join("consent.db");
    std::fs::write(&readable, b"").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let served = Served::start(dir.path(), &data_dir, &format!("127.0.0.1:{port}"), port).await;
    assert_owner_only(&data_dir);
    let (stdout, _) = served.stop();
    let warning = stdout
        .lines()
        .find(|l| l.contains(&readable.display().to_string()))
        .unwrap_or_else(|| panic!("no line names {}:\n{stdout}", readable.display()));
    assert!(
        warning.contains("WARN") && warning.contains("tightened"),
        "{warning}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("path={} ", data_dir.display()))),
        "{stdout}"
    );
}
