//! Deletion stays deleted (D-9): an erased subject's data is not left readable
//! in the SQLite files, and a backup taken before the erasure, once restored,
//! brings the subject back only until `custodia erasures replay` (the real
//! binary) applies the erasure ledger again. On both backends.

use std::{path::Path, process::Command};

use custodia_core::{Config, ServiceName, storage};
use custodia_proto::{
    audit::v1::{ListEventsRequest, ShredSubjectRequest},
    consent::v1::{CheckReason, EraseSubjectRequest},
};
use custodia_tests::{Backend, TestApp, check, email, eventually, grant, postgres_admin_url};
use sqlx::{AssertSqlSafe, Connection, Executor};

const SERVICES: &[custodia_core::server::ServiceDef] =
    &[custodia_audit_log::SERVICE, custodia_consent::SERVICE];

/// Something only Ada's consent event holds (its browser).
const MARKER: &str = "Mozilla/5.0 (erasure-marker-7f3a)";

#[tokio::test]
async fn backup_erase_restore_replay_sqlite() {
    backup_erase_restore_replay(Backend::Sqlite).await;
}

#[tokio::test]
async fn backup_erase_restore_replay_postgres() {
    backup_erase_restore_replay(Backend::Postgres).await;
}

/// How many access events name `who` in the audit log.
async fn audit_events_of(app: &TestApp, who: &str) -> usize {
    app.audit()
        .await
        .list_events(ListEventsRequest {
            subject: Some(email(who)),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

/// The SQLite files of `service` under `dir` (the database and its log).
fn sqlite_files(dir: &Path, service: ServiceName) -> [std::path::PathBuf; 3] {
    let db = dir.join(format!("{}.db", service.ident()));
    let wal = db.with_extension("db-wal");
    let shm = db.with_extension("db-shm");
    [db, wal, shm]
}

/// Copies the databases of `config` to `backup` (SQLite: `VACUUM INTO` a file;
/// PostgreSQL: a database made from it as a template).
async fn back_up(config: &Config, database: Option<&str>, backup: &str) {
    match database {
        None => {
            for service in [ServiceName::Consent, ServiceName::AuditLog] {
                let [db, ..] = sqlite_files(&config.data_dir, service);
                let to = config
                    .data_dir
                    .join(format!("{backup}-{}.db", service.ident()));
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                        .await
                        .unwrap();
                conn.execute(AssertSqlSafe(format!("VACUUM INTO '{}'", to.display())))
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            }
        }
        Some(name) => {
            let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .unwrap();
            admin
                .execute(AssertSqlSafe(format!(
                    "CREATE DATABASE {name}_{backup} TEMPLATE {name}"
                )))
                .await
                .unwrap();
            admin.close().await.unwrap();
        }
    }
}

/// Replaces the databases of `config` by the copy `backup`.
async fn restore(config: &Config, database: Option<&str>, backup: &str) {
    match database {
        None => {
            for service in [ServiceName::Consent, ServiceName::AuditLog] {
                let files = sqlite_files(&config.data_dir, service);
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
                let from = config
                    .data_dir
                    .join(format!("{backup}-{}.db", service.ident()));
                std::fs::copy(from, &files[0]).unwrap();
            }
        }
        Some(name) => {
            let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .unwrap();
            for sql in [
                format!("DROP DATABASE {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name} TEMPLATE {name}_{backup}"),
                format!("DROP DATABASE {name}_{backup}"),
            ] {
                admin.execute(AssertSqlSafe(sql)).await.unwrap();
            }
            admin.close().await.unwrap();
        }
    }
}

/// `custodia erasures replay` over the databases of `config`; its report.
fn replay(config: &Config) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodia"));
    cmd.args(["erasures", "replay", "--data-dir"])
        .arg(&config.data_dir)
        .env("RUST_LOG", "error");
    if let Some(url) = &config.database.url {
        use secrecy::ExposeSecret;
        cmd.arg("--database-url").arg(url.expose_secret());
        // What any command needs with PostgreSQL, as `serve` does.
        let key = config.audit.subject_hash_key.as_ref().expect("a key");
        cmd.env("CUSTODIA__AUDIT__SUBJECT_HASH_KEY", key.expose_secret());
    }
    let out = cmd.output().expect("custodia runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn backup_erase_restore_replay(backend: Backend) {
    let app = TestApp::spawn(backend, SERVICES).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;
    for who in ["ada@example.edu", "bob@example.edu"] {
        let mut r = grant(&app, who, &notice);
        if who.starts_with("ada") {
            r.evidence.as_mut().unwrap().user_agent = MARKER.into();
        }
        c.record_consent(r).await.unwrap();
    }
    eventually(|| async { (audit_events_of(&app, "ada@example.edu").await > 0).then_some(()) })
        .await;

    // Last night's backup.
    let app = app
        .while_stopped(SERVICES, |config, database| async move {
            back_up(&config, database.as_deref(), "nightly").await;
        })
        .await;

    // Ada asks for erasure: consent records erased, access log shredded.
    let mut c = app.consent().await;
    c.erase_subject(EraseSubjectRequest {
        subject_identifiers: vec![email("ada@example.edu")],
        dsar_request: "requests/r-ada".into(),
        request_id: "erase-ada".into(),
    })
    .await
    .unwrap();
    app.audit()
        .await
        .shred_subject(ShredSubjectRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            dsar_request: "requests/r-ada".into(),
            request_id: "shred-ada".into(),
        })
        .await
        .unwrap();
    // (Before the check below, itself an access naming her.)
    assert_eq!(audit_events_of(&app, "ada@example.edu").await, 0);
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    if backend == Backend::Sqlite {
        // Nothing of her consent is left readable in the files: the freed
        // space was zeroed and the write-ahead log emptied.
        for f in sqlite_files(&app.config.data_dir, ServiceName::Consent) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                "{} still holds the erased consent",
                f.display()
            );
        }
    }
    let ledger = std::fs::read_to_string(app.config.erasure_ledger_path()).unwrap();
    assert_eq!(ledger.lines().count(), 2, "{ledger}");
    assert!(!ledger.contains("ada@"), "hashes only: {ledger}");

    // The disk is lost; last night's backup is restored: Ada is back.
    let app = app
        .while_stopped(SERVICES, |config, database| async move {
            restore(&config, database.as_deref(), "nightly").await;
        })
        .await;
    let logged = audit_events_of(&app, "ada@example.edu").await;
    assert!(logged > 0, "the backup predates the shredding");
    let mut c = app.consent().await;
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (true, CheckReason::Granted),
        "the backup predates the erasure"
    );
    // (That check is an access naming her: once it is in the log, the log is
    // as the replay will find it.)
    eventually(|| async {
        (audit_events_of(&app, "ada@example.edu").await > logged).then_some(())
    })
    .await;

    // The replay erases her again, and only her; twice is harmless.
    let app = app
        .while_stopped(SERVICES, |config, _| async move {
            let report = replay(&config);
            assert!(report.starts_with("2 erasure(s) replayed"), "{report}");
            assert!(report.contains("consent: 1 event(s)"), "{report}");
            let again = replay(&config);
            assert!(again.contains("consent: 0 event(s)"), "{again}");
            // The replay opened the databases the way the services do.
            let db = storage::open_service(&config, ServiceName::Consent)
                .await
                .unwrap();
            db.close().await;
        })
        .await;
    assert_eq!(audit_events_of(&app, "ada@example.edu").await, 0);
    assert!(audit_events_of(&app, "bob@example.edu").await > 0);
    let mut c = app.consent().await;
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    assert_eq!(
        check(&mut c, "bob@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );
    app.stop().await;
}
