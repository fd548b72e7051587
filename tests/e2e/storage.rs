//! Storage on both backends: the outbox store passes the shared conformance suite,
//! writes are transactional, migrations are idempotent, and services sharing one
//! PostgreSQL database never share tables.

use custodia_core::{
    config::ReadEventSync,
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox, conformance, enqueue_in},
    storage::{self, Backend as DbBackend, Db, Script},
};
use custodia_tests::TestDatabase;

/// A database URL as the secret type `storage::connect` takes.
fn secret(s: &str) -> secrecy::SecretString {
    s.to_string().into()
}

/// A fresh SQLite database `<name>.db` in `dir` (not migrated).
pub(crate) async fn sqlite_db(dir: &tempfile::TempDir, name: &str) -> Db {
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

/// Runs `test` on a fresh PostgreSQL database through a pool of `connections`,
/// then drops the database.
async fn on_postgres<Fut: Future<Output = ()>>(connections: u32, test: impl FnOnce(Db) -> Fut) {
    let pg = TestDatabase::create().await;
    let db = storage::connect(&secret(&pg.url), "consent", connections)
        .await
        .unwrap();
    assert_eq!(db.backend(), DbBackend::Postgres);
    test(db.clone()).await;
    db.close().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn relaxed_outbox_conformance_postgres() {
    on_postgres(4, |db| async move {
        db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
        conformance::run(&SqlOutbox::with_read_sync(db, ReadEventSync::Relaxed)).await;
    })
    .await;
}

#[tokio::test]
async fn outbox_conformance_postgres() {
    on_postgres(4, |db| async move {
        db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
        conformance::run(&SqlOutbox::new(db)).await;
    })
    .await;
}

/// PostgreSQL with a read-event journal (`audit.read_event_journal_dir`): reads'
/// events go to the file first and the outbox behaves the same.
#[tokio::test]
async fn journal_outbox_conformance_postgres() {
    let dir = tempfile::tempdir().unwrap();
    // A directory not there yet: the outbox creates it.
    let path = dir.path().join("journals").join("consent-read-events");
    on_postgres(4, |db| async move {
        db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
        assert_eq!(
            payload_compression(&db).await,
            lz4_if_supported(&db).await,
            "journal moves insert rows of ~40 KB: lz4 where the server has it"
        );
        let outbox = SqlOutbox::with_journal(db, ReadEventSync::Relaxed, Some(&path));
        assert!(outbox.has_journal());
        conformance::run(&outbox).await;
    })
    .await;
}

/// `l` where the PostgreSQL server was built with lz4, else empty (the column
/// keeps the server's default).
async fn lz4_if_supported(db: &Db) -> String {
    sqlx::query(
        "SELECT CAST('l' AS TEXT) FROM pg_settings \
         WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)",
    )
    .fetch_optional(db.pool())
    .await
    .unwrap()
    .map(|row| sqlx::Row::get(&row, 0))
    .unwrap_or_default()
}

/// How PostgreSQL compresses new outbox payloads: `l` lz4, `p` pglz, empty the
/// server's `default_toast_compression`.
async fn payload_compression(db: &Db) -> String {
    sqlx::Row::get(
        &sqlx::query(
            "SELECT CAST(attcompression AS TEXT) FROM pg_attribute \
             WHERE attrelid = CAST('access_event_outbox' AS regclass) AND attname = 'payload'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap(),
        0,
    )
}

/// Events in the outbox table, read directly (`pending` would move the journal first).
async fn table_events(db: &Db) -> i64 {
    sqlx::Row::get(
        &sqlx::query(
            "SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) FROM access_event_outbox",
        )
        .fetch_one(db.pool())
        .await
        .unwrap(),
        0,
    )
}

/// A PostgreSQL service's journal left behind by a process that stopped without
/// moving it (kill -9): the next outbox over the same file moves every record into
/// the table, once; `move_journal`, which a graceful stop calls before the
/// database closes, empties the file at once.
#[test]
fn postgres_journal_left_behind_is_moved_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consent-read-events");
    let pg = rt.block_on(TestDatabase::create());
    let db = rt.block_on(async {
        let db = storage::connect(&secret(&pg.url), "consent", 2)
            .await
            .unwrap();
        db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
        db
    });
    // Bytes in every file of the journal (active and sealed segments), the lock aside.
    let journal_len = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                let name = e.file_name().into_string().unwrap();
                name.starts_with("consent-read-events") && !name.ends_with(".lock")
            })
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };

    // Built outside the runtime, an outbox has no background move: what it journals
    // stays in the file, as after a kill -9.
    let first = SqlOutbox::with_journal(db.clone(), ReadEventSync::Relaxed, Some(&path));
    let sent: Vec<AccessEvent> = (0..50).map(|_| event()).collect();
    rt.block_on(async {
        for e in &sent {
            first.enqueue(e).await.unwrap();
        }
    });
    assert!(journal_len() > 0, "the events are in the journal");
    assert_eq!(
        rt.block_on(table_events(&db)),
        0,
        "and not yet in the table"
    );
    drop(first);

    // Outside the runtime too: a background move of this outbox, suspended in the
    // middle of a move, would still hold the journal (and its lock) after `drop`,
    // and the third outbox would then write to the table directly. `peek` moves
    // the journal itself.
    let second = SqlOutbox::with_journal(db.clone(), ReadEventSync::Relaxed, Some(&path));
    let stored = rt.block_on(second.peek(1_000)).unwrap();
    let ids: std::collections::HashSet<_> = stored.iter().map(|(_, e)| e.event_id).collect();
    let want: std::collections::HashSet<_> = sent.iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), sent.len(), "each event once");
    assert_eq!(ids, want, "every journaled event");
    assert_eq!(journal_len(), 0, "the journal is emptied once moved");
    drop(second);

    // What a graceful stop does.
    let third = SqlOutbox::with_journal(db.clone(), ReadEventSync::Relaxed, Some(&path));
    rt.block_on(third.enqueue(&event())).unwrap();
    assert!(journal_len() > 0);
    rt.block_on(third.move_journal()).unwrap();
    assert_eq!(journal_len(), 0);
    assert_eq!(rt.block_on(table_events(&db)), 51);
    rt.block_on(async {
        db.close().await;
        pg.drop_now().await;
    });
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
    on_postgres(4, outbox_is_transactional).await;
}

/// Values of table `t`, in id order.
async fn values(db: &Db) -> Vec<String> {
    sqlx::query("SELECT v FROM t ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::get(r, 0))
        .collect()
}

/// Two inserts of table `t` in one script.
fn two_rows(db: &Db, ids: (i64, i64), label: &str) -> Script {
    rows_into(Script::new(db.backend()), ids, label)
}

fn rows_into(mut script: Script, (a, b): (i64, i64), label: &str) -> Script {
    for id in [a, b] {
        let sql = format!("INSERT INTO t (id, v) VALUES ({})", script.placeholders(2));
        script.push(&sql, |p| {
            p.bind(id).bind(format!("{label}{id}"));
        });
    }
    script
}

/// Scripts: a write commits whole or not at all (a failing statement in the middle
/// of a script undoes the ones before it), and a transaction given up half way
/// never leaves its connection in the pool inside a transaction. `db` has one
/// connection, so every step reuses the one the step before used (or its
/// replacement).
async fn scripts_are_transactional(db: Db) {
    sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();

    let tx = db.begin_script().await.unwrap();
    tx.commit(two_rows(&db, (1, 2), "a")).await.unwrap();
    assert_eq!(values(&db).await, ["a1", "a2"]);

    // A read first (BEGIN goes with it), then a write whose second row collides.
    let mut tx = db.begin_script().await.unwrap();
    let mut read = Script::new(db.backend());
    read.push("SELECT COUNT(*) FROM t", |_| ());
    let rows = tx.fetch_all(read).await.unwrap();
    assert_eq!(sqlx::Row::get::<i64, _>(&rows[0], 0), 2);
    let err = tx.commit(two_rows(&db, (3, 1), "b")).await;
    assert!(err.is_err(), "duplicate key refused");
    assert_eq!(values(&db).await, ["a1", "a2"], "b3 rolled back with b1");

    // As one statement (on PostgreSQL: no BEGIN, the statement alone), still all
    // or nothing.
    let tx = db.begin_script().await.unwrap();
    let one = rows_into(Script::one_statement(db.backend()), (10, 2), "f");
    assert!(tx.commit(one).await.is_err(), "duplicate key refused");
    assert_eq!(values(&db).await, ["a1", "a2"], "f10 rolled back with f2");

    // Written, then given up without commit or rollback.
    let mut tx = db.begin_script().await.unwrap();
    tx.fetch_all(two_rows(&db, (4, 5), "c")).await.unwrap();
    drop(tx);
    assert_eq!(values(&db).await, ["a1", "a2"], "c4 and c5 never committed");

    // Explicit rollback, then the connection serves the next write.
    let mut tx = db.begin_script().await.unwrap();
    tx.fetch_all(two_rows(&db, (6, 7), "d")).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = db.begin_script().await.unwrap();
    tx.commit(two_rows(&db, (8, 9), "e")).await.unwrap();
    let tx = db.begin_script().await.unwrap();
    let one = rows_into(Script::one_statement(db.backend()), (11, 12), "g");
    tx.commit(one).await.unwrap();
    assert_eq!(values(&db).await, ["a1", "a2", "e8", "e9", "g11", "g12"]);
}

#[tokio::test]
async fn scripts_are_transactional_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = storage::sqlite_file_url(&dir.path().join("script.db"));
    let db = storage::connect(&secret(&url), "consent", 1).await.unwrap();
    scripts_are_transactional(db).await;
}

#[tokio::test]
async fn scripts_are_transactional_postgres() {
    on_postgres(1, scripts_are_transactional).await;
}

/// Committed pages reach the SQLite database file without any commit crossing
/// the WAL limit: the background checkpointer copies them (a commit that had to
/// do it itself would wait for the copy and the flush).
#[tokio::test]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "wal").await;
    sqlx::query("CREATE TABLE pages (body BLOB NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    // ~400 pages: far below the commit-path limit, so only the checkpointer can
    // move them into the database file while the pool stays open.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400) \
         INSERT INTO pages SELECT randomblob(4000) FROM n",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let file = dir.path().join("wal.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&file).unwrap().len() < 400 * 4000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not checkpointed into {}",
            file.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.close().await;
}

/// Every SQLite write under the write turn uses one connection: a write on
/// another connection would make SQLite drop that connection's page cache. A
/// temporary table (visible to its connection only) shows which connection a
/// transaction ran on.
#[tokio::test]
async fn sqlite_writes_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "writer").await;
    let mut tx = db.begin_write().await.unwrap();
    sqlx::query("CREATE TEMP TABLE mine (x INTEGER)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The pool's connections do not see it.
    for _ in 0..4 {
        let mut conn = db.pool().acquire().await.unwrap();
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_temp_master WHERE name = 'mine'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(seen, 0);
    }
    for _ in 0..3 {
        let mut tx = db.begin_write().await.unwrap();
        sqlx::query("INSERT INTO mine (x) VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect("a write transaction runs on the writer connection");
        tx.commit().await.unwrap();
    }
    let mut tx = db.begin_script().await.unwrap();
    let rows = tx
        .fetch_all({
            let mut script = Script::new(DbBackend::Sqlite);
            script.push("SELECT count(*) FROM mine", |_| ());
            script
        })
        .await
        .expect("a script transaction runs on the writer connection");
    assert_eq!(sqlx::Row::get::<i64, _>(&rows[0], 0), 3);
    tx.rollback().await.unwrap();
    db.close().await;
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
