//! Storage on both backends: the outbox store passes the shared conformance suite,
//! writes are transactional, migrations are idempotent, and services sharing one
//! PostgreSQL database never share tables.

use custodia_core::{
    config::ReadEventSync,
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox, conformance, enqueue_in},
    storage::{self, Backend as DbBackend, Db},
};
use custodia_tests::TestDatabase;

/// A database URL as the secret type `storage::connect` takes.
fn secret(s: &str) -> secrecy::SecretString {
    s.to_string().into()
}

async fn sqlite_db(dir: &tempfile::TempDir, name: &str) -> Db {
    let url = storage::sqlite_file_url(&dir.path().join(format!("{name}.db")));
    let db = storage::connect(&secret(&url), name, 4)
        .await
        .expect("sqlite opens");
    assert_eq!(db.backend(), DbBackend::Sqlite);
    db
}

#[tokio::test]
async fn outbox_conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "consent").await;
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    conformance::run(&SqlOutbox::new(db)).await;
}

/// Reads' events committed without a flush (`audit.read_event_sync = relaxed`, the
/// default) behave the same, and the connection they used is back to full
/// durability for the writes that reuse it.
#[tokio::test]
async fn relaxed_outbox_conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // One connection, so the check below sees the one the outbox used.
    let url = storage::sqlite_file_url(&dir.path().join("relaxed.db"));
    let db = storage::connect(&secret(&url), "consent", 1).await.unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let outbox = SqlOutbox::with_read_sync(db.clone(), ReadEventSync::Relaxed);
    conformance::run(&outbox).await;
    outbox.enqueue(&event()).await.unwrap();
    let synchronous: i64 = sqlx::Row::get(
        &sqlx::query("PRAGMA synchronous")
            .fetch_one(db.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(synchronous, 2, "FULL again after a relaxed commit");
}

#[tokio::test]
async fn relaxed_outbox_conformance_postgres() {
    let pg = TestDatabase::create().await;
    let db = storage::connect(&secret(&pg.url), "consent", 4)
        .await
        .unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    conformance::run(&SqlOutbox::with_read_sync(
        db.clone(),
        ReadEventSync::Relaxed,
    ))
    .await;
    db.close().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn outbox_conformance_postgres() {
    let pg = TestDatabase::create().await;
    let db = storage::connect(&secret(&pg.url), "consent", 4)
        .await
        .unwrap();
    assert_eq!(db.backend(), DbBackend::Postgres);
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    conformance::run(&SqlOutbox::new(db.clone())).await;
    db.close().await;
    pg.drop_now().await;
}

fn event() -> AccessEvent {
    AccessEvent::new(
        chrono::Utc::now(),
        "dpo",
        "consent",
        "RecordConsent",
        Outcome::Ok,
    )
}

async fn outbox_is_transactional(db: Db) {
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    // Run twice: migrations are idempotent.
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let outbox = SqlOutbox::new(db.clone());

    let mut tx = db.pool().begin().await.unwrap();
    enqueue_in(&mut tx, &event()).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        outbox.pending().await.unwrap(),
        0,
        "rolled back with the change"
    );

    let mut tx = db.pool().begin().await.unwrap();
    enqueue_in(&mut tx, &event()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        outbox.pending().await.unwrap(),
        1,
        "committed with the change"
    );
}

#[tokio::test]
async fn outbox_is_transactional_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    outbox_is_transactional(sqlite_db(&dir, "consent").await).await;
}

#[tokio::test]
async fn outbox_is_transactional_postgres() {
    let pg = TestDatabase::create().await;
    let db = storage::connect(&secret(&pg.url), "consent", 4)
        .await
        .unwrap();
    outbox_is_transactional(db.clone()).await;
    db.close().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn services_sharing_a_postgres_database_get_their_own_schema() {
    let pg = TestDatabase::create().await;
    let consent = storage::connect(&secret(&pg.url), "consent", 2)
        .await
        .unwrap();
    let dsar = storage::connect(&secret(&pg.url), "dsar", 2).await.unwrap();
    consent
        .migrate(&custodia_consent::MIGRATIONS)
        .await
        .unwrap();
    dsar.migrate(&custodia_dsar::MIGRATIONS).await.unwrap();
    SqlOutbox::new(consent.clone())
        .enqueue(&event())
        .await
        .unwrap();
    assert_eq!(SqlOutbox::new(consent.clone()).pending().await.unwrap(), 1);
    assert_eq!(SqlOutbox::new(dsar.clone()).pending().await.unwrap(), 0);
    consent.close().await;
    dsar.close().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_echoing_them() {
    let err = storage::connect(&secret("mysql://root:hunter2@db/x"), "consent", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
