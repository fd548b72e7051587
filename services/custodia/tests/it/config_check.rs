//! `custodia config check` refuses what `custodia serve` refuses, with the same
//! message (issue 24, finding 7): one validation behind both.

use std::process::{Command, Output};

fn custodia(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custodia"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("CUSTODIA_ADMIN_TOKEN")
        .env_remove("CUSTODIA_CONFIG")
        .env_remove("CUSTODIA_DATABASE_URL")
        .env("RUST_LOG", "error")
        .output()
        .expect("custodia runs")
}

#[test]
fn config_check_refuses_each_bad_file_serve_refuses() {
    let bad = [
        (
            "[auth.principals.crm]\ntoken = \"crm-token-0123456789\"\nscopes = [\"consent.check\", \"consent.chek\"]\n",
            "auth.principals.crm.scopes: unknown scope `consent.chek`",
        ),
        (
            "[auth.principals.crm]\ntoken = \"short\"\nscopes = [\"consent.check\"]\n",
            "auth.principals.crm: the token is shorter than 16 characters",
        ),
        (
            "[auth.principals.crm]\ntoken = \"shared-token-0123456789\"\nscopes = [\"consent.check\"]\n\
             [auth.principals.moodle]\ntoken = \"shared-token-0123456789\"\nscopes = [\"consent.check\"]\n",
            "auth.principals.crm and auth.principals.moodle have the same token",
        ),
        (
            "[server]\nconcurrency_limit_per_connection = 0\n",
            "server.concurrency_limit_per_connection",
        ),
        (
            "[server]\nrequest_timeout_secs = 0\n",
            "server.request_timeout_secs",
        ),
    ];
    for (toml, needle) in bad {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap();

        let checked = custodia(&["config", "check", "--config", file], dir.path());
        let check_err = String::from_utf8_lossy(&checked.stderr);
        assert!(!checked.status.success(), "config check passed:\n{toml}");
        assert!(check_err.contains(needle), "{needle}: {check_err}");

        // serve refuses it the same way, before binding or creating anything.
        let served = custodia(
            &[
                "serve",
                "consent",
                "--listen",
                "127.0.0.1:0",
                "--config",
                file,
            ],
            dir.path(),
        );
        let serve_err = String::from_utf8_lossy(&served.stderr);
        assert!(!served.status.success(), "serve started:\n{toml}");
        assert_eq!(serve_err, check_err);
        assert!(!dir.path().join("data").exists());
    }

    // A sound file passes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custodia.toml");
    std::fs::write(
        &file,
        "[auth.principals.crm]\ntoken = \"crm-token-0123456789\"\nscopes = [\"consent.check\", \"consent.write\"]\n\
         [auth.principals.dpo]\ntoken = \"dpo-token-0123456789\"\nscopes = [\"*\"]\n",
    )
    .unwrap();
    let checked = custodia(
        &["config", "check", "--config", file.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
