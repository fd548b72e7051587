//! The data directory of the embedded default holds personal data in clear and
//! secrets: it is 0700 and every file in it 0600 (issue 24, finding 4), whatever
//! the umask of the test process.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;

use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{CheckConsentRequest, consent_service_client::ConsentServiceClient},
};
use custodia_tests::{Backend, TestApp, assert_owner_only, authed};

use crate::all_services;

fn names(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn data_dir_and_every_file_in_it_are_owner_only() {
    // A data directory custodia creates itself (the temp dir is 0700 already),
    // with every key and token generated.
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.data_dir = c.data_dir.join("data");
        c.auth.admin_token = None;
        c.consent.receipt_signing_key = None;
    })
    .await;
    let token = std::fs::read_to_string(app.config.data_dir.join("admin.token")).unwrap();
    let mut consent = ConsentServiceClient::new(app.channel().await);
    // A write and a read: the databases' write-ahead logs and the read-event journal.
    consent
        .create_purpose(authed(custodia_tests::newsletter_purpose(), token.trim()))
        .await
        .unwrap();
    consent
        .check_consent(authed(
            CheckConsentRequest {
                subject: Some(SubjectRef {
                    r#type: "email".into(),
                    value: "ada@example.edu".into(),
                }),
                purpose: "purposes/newsletter".into(),
            },
            token.trim(),
        ))
        .await
        .unwrap();

    let found = names(&assert_owner_only(&app.config.data_dir));
    for expected in [
        "admin.token",
        "subject-hash.key",
        "audit-signing.key",
        "consent-receipt.key",
        "consent.db",
        "consent.db-wal",
        "consent.db-shm",
        "consent.db-read-events",
        "audit_log.db",
        "audit_log.db-wal",
        "audit_log.db-shm",
        "dsar.db",
        "breach.db",
    ] {
        assert!(found.iter().any(|f| f == expected), "{expected}: {found:?}");
    }
    let data_dir = app.config.data_dir.clone();
    app.stop().await;
    // What the stop leaves (checkpointed databases, moved journals) too.
    assert_owner_only(&data_dir);
}

#[tokio::test]
async fn group_or_world_readable_files_in_the_data_dir_are_tightened_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Left by an earlier version, or copied in by an operator with umask 022 (an
    // empty file is a new database to SQLite); tightened before it is opened, so
    // the -wal and -shm SQLite creates beside it take its new mode.
    let stale = data_dir.join("consent.db");
    std::fs::write(&stale, b"").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let notes = data_dir.join("notes.txt");
    std::fs::write(&notes, b"operator's").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o664)).unwrap();

    let app = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |c| {
        c.data_dir = data_dir.clone();
    })
    .await;
    assert_owner_only(&data_dir);
    assert_eq!(std::fs::read(&notes).unwrap(), b"operator's");
    app.stop().await;
}
