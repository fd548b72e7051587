//! The audit log's storage and integrity on both backends: append-only in the
//! database itself, gap-free idempotent appends, signed heads with proofs that an
//! independent RFC 6962 verifier accepts, crypto-shredding that keeps the tree
//! verifiable, and tamper detection that names the first bad sequence number.

use std::{collections::HashMap, sync::Arc};

use custodia_audit_log::{
    entry::SubjectFields,
    log::AuditLog,
    merkle::{leaf_hash, verify_consistency, verify_inclusion},
    signer::HeadSigner,
    store::{EventFilter, LogStore, NewEvent, StoredEntry, StoredHead},
    verify::{verify, verify_url},
};
use custodia_core::{
    legal_time::{Clock, ManualClock},
    storage::{self, Db},
};
use custodia_tests::{Backend, TestDatabase};
use sqlx::AssertSqlSafe;

fn event(i: usize, subject: Option<&str>) -> NewEvent {
    NewEvent {
        event_id: format!("evt-{i}"),
        time_us: 1_700_000_000_000_000 + i as i64,
        actor: if i.is_multiple_of(2) { "crm" } else { "moodle" }.into(),
        service: "consent".into(),
        method: "CheckConsent".into(),
        action: "check".into(),
        resource: format!("purposes/p{}", i % 3),
        purpose: "newsletter".into(),
        outcome: "ok".into(),
        status_code: 0,
        trace_id: format!("{i:032x}"),
        detail: String::new(),
        subject: subject.map(|s| SubjectFields {
            subject_type: "email".into(),
            subject_hash: s.into(),
            detail: String::new(),
        }),
        members: Vec::new(),
    }
}

struct Fixture {
    log: Arc<AuditLog>,
    db: Db,
    url: String,
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    pg: Option<TestDatabase>,
}

async fn fixture(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = if backend == Backend::Postgres {
        let pg = TestDatabase::create().await;
        (pg.url.clone(), Some(pg))
    } else {
        (storage::sqlite_file_url(&dir.path().join("audit.db")), None)
    };
    let db = storage::connect(&url.clone().into(), "audit_log", 4)
        .await
        .unwrap();
    db.migrate(&custodia_audit_log::MIGRATIONS).await.unwrap();
    let signer = HeadSigner::from_seed_text(&"42".repeat(32)).unwrap();
    let keys = HashMap::from([(signer.key_id().to_string(), signer.public_key())]);
    let clock = Arc::new(ManualClock::new("2026-11-02T09:00:00Z".parse().unwrap()));
    let log = AuditLog::open(
        LogStore::new(db.clone()),
        signer,
        clock.clone() as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    Fixture {
        log,
        db,
        url,
        keys,
        clock,
        _dir: dir,
        pg,
    }
}

/// The first 100 entries (found by `subject_hash`, if given).
async fn entries(f: &Fixture, subject_hash: Option<&str>) -> Vec<StoredEntry> {
    let filter = EventFilter {
        subject_hash: subject_hash.map(str::to_string),
        ..Default::default()
    };
    f.log.store().list(&filter, None, 100).await.unwrap()
}

impl Fixture {
    async fn done(self) {
        self.db.close().await;
        if let Some(pg) = self.pg {
            pg.drop_now().await;
        }
    }
}

async fn appends_proofs_and_shredding(backend: Backend) {
    let f = fixture(backend).await;
    let alice = "a".repeat(64);
    let bob = "b".repeat(64);

    // Gap-free sequence numbers; the same event id (in a batch or later) keeps its number.
    let batch: Vec<_> = (0..10)
        .map(|i| event(i, Some(if i.is_multiple_of(2) { &alice } else { &bob })))
        .collect();
    let seqs = f.log.append(&batch).await.unwrap();
    assert_eq!(seqs, (0..10).map(|s| (s, false)).collect::<Vec<_>>());
    let again = f
        .log
        .append(&[event(3, Some(&bob)), event(10, None), event(10, None)])
        .await
        .unwrap();
    assert_eq!(again, vec![(3, true), (10, false), (10, true)]);
    assert_eq!(f.log.store().size().await.unwrap(), 11);

    // A signed head covers everything; proofs verify independently.
    let head = f.log.integrate().await.unwrap().expect("a new head");
    assert_eq!(head.tree_size, 11);
    assert!(
        f.log.integrate().await.unwrap().is_none(),
        "nothing new to sign"
    );
    let rows = f.log.store().raw_entries(0, 100).await.unwrap();
    for raw in &rows {
        let (leaf, proof) = f.log.inclusion_proof(raw.seq, 11).await.unwrap().unwrap();
        assert_eq!(leaf, leaf_hash(&raw.entry));
        verify_inclusion(&leaf, raw.seq, 11, &proof, &head.root).unwrap();
    }
    f.clock.advance(chrono::Duration::seconds(1));
    f.log.append(&[event(11, Some(&alice))]).await.unwrap();
    let head2 = f.log.integrate().await.unwrap().unwrap();
    let proof = f.log.consistency_proof(11, 12).await.unwrap().unwrap();
    verify_consistency(11, 12, &head.root, &head2.root, &proof).unwrap();

    // Search by subject, actor and time.
    let by_alice = entries(&f, Some(&alice)).await;
    assert_eq!(
        by_alice.iter().map(|e| e.entry.seq).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8, 11]
    );
    assert!(
        by_alice
            .iter()
            .all(|e| e.subject.as_ref().unwrap().subject_hash == alice)
    );
    let page = f
        .log
        .store()
        .list(
            &EventFilter {
                actor: Some("moodle".into()),
                ..Default::default()
            },
            Some(3),
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.entry.seq).collect::<Vec<_>>(),
        vec![5, 7]
    );

    // Shredding: the subject can no longer be read or found; the log still verifies.
    assert_eq!(f.log.store().shred(&alice, 0).await.unwrap(), 6);
    assert!(entries(&f, Some(&alice)).await.is_empty());
    let all = entries(&f, None).await;
    let shredded: Vec<_> = all
        .iter()
        .filter(|e| e.shredded)
        .map(|e| e.entry.seq)
        .collect();
    assert_eq!(shredded, vec![0, 2, 4, 6, 8, 11]);
    assert!(
        all.iter()
            .filter(|e| !e.shredded)
            .all(|e| e.subject.as_ref().is_none_or(|s| s.subject_hash == bob))
    );
    let report = verify(f.log.store(), &f.keys).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.entries, report.heads), (12, 2));

    // A subject seen again after a shred gets a new key: the new entry is
    // readable and found by subject, the shredded ones stay unreadable.
    let seqs = f.log.append(&[event(12, Some(&alice))]).await.unwrap();
    assert_eq!(seqs, vec![(12, false)]);
    let again = entries(&f, Some(&alice)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry.seq, 12);
    assert!(!again[0].shredded);
    assert_eq!(again[0].subject.as_ref().unwrap().subject_hash, alice);
    let all = entries(&f, None).await;
    assert_eq!(all.iter().filter(|e| e.shredded).count(), 6);

    // Append-only in the database itself.
    for sql in [
        "UPDATE audit_entries SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_entries WHERE seq = 1",
        "UPDATE audit_tree_heads SET tree_size = 99",
        "DELETE FROM audit_tree_heads",
    ] {
        let err = sqlx::query(AssertSqlSafe(sql)).execute(f.db.pool()).await;
        assert!(err.is_err(), "{sql} must be refused");
    }
    f.done().await;
}

custodia_tests::both_backends!(appends_proofs_and_shredding);

/// Every key the log was opened with is kept, newest first, a key opened again
/// keeping its first use (a replica restarted on the old key during a rotation),
/// and the list is append-only in the database itself.
async fn signing_keys_are_kept_newest_first(backend: Backend) {
    let f = fixture(backend).await;
    let old = f.log.signer().clone();
    f.clock.advance(chrono::Duration::hours(1));
    let new = HeadSigner::from_seed_text(&"43".repeat(32)).unwrap();
    for signer in [new.clone(), old.clone()] {
        AuditLog::open(
            LogStore::new(f.db.clone()),
            signer,
            f.clock.clone() as Arc<dyn Clock>,
        )
        .await
        .unwrap();
        f.clock.advance(chrono::Duration::hours(1));
    }
    let keys = f.log.store().signing_keys().await.unwrap();
    let opened = |hours: i64| {
        custodia_core::storage::to_micros(
            "2026-11-02T09:00:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                + chrono::Duration::hours(hours),
        )
    };
    assert_eq!(
        keys,
        vec![
            (
                new.key_id().to_string(),
                new.public_key().as_bytes().to_vec(),
                opened(1)
            ),
            (
                old.key_id().to_string(),
                old.public_key().as_bytes().to_vec(),
                opened(0)
            ),
        ]
    );
    for sql in [
        "UPDATE audit_signing_keys SET first_used_us = 0",
        "DELETE FROM audit_signing_keys",
    ] {
        let err = sqlx::query(AssertSqlSafe(sql)).execute(f.db.pool()).await;
        assert!(err.is_err(), "{sql} must be refused");
    }
    f.done().await;
}

custodia_tests::both_backends!(signing_keys_are_kept_newest_first);

/// Appenders that meet the same new subjects at once (the group writers of a
/// PostgreSQL replica create subject keys before taking the sequence lock, and so
/// do other replicas) agree on one key per subject: every entry stays readable.
#[tokio::test]
async fn concurrent_appends_agree_on_new_subject_keys_postgres() {
    let f = fixture(Backend::Postgres).await;
    let subjects: Vec<String> = (0..40).map(|i| format!("{i:064x}")).collect();
    // Two replicas' stores over one database, appending in parallel.
    let stores = [LogStore::new(f.db.clone()), LogStore::new(f.db.clone())];
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = stores[t % 2].clone();
            let batch: Vec<NewEvent> = subjects
                .iter()
                .enumerate()
                .map(|(i, s)| event(t * 1_000 + i, Some(s)))
                .collect();
            tokio::spawn(async move { store.append(&batch, 1_700_000_000_000_000).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let keys: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM audit_subject_keys")
            .fetch_one(f.db.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(keys, 40, "one key per subject");
    assert_eq!(f.log.store().size().await.unwrap(), 320);
    for s in &subjects {
        let found = entries(&f, Some(s)).await;
        assert_eq!(found.len(), 8, "every append of {s}");
        assert!(
            found
                .iter()
                .all(|e| !e.shredded && e.subject.as_ref().is_some_and(|x| &x.subject_hash == s)),
            "readable with the subject's one key"
        );
    }
    f.done().await;
}

/// Builds a 20-entry log with heads at sizes 0, 8 and 20, then lets `tamper`
/// change the database behind custodia's back (triggers dropped, as an
/// administrator could) and returns the first bad sequence number reported.
async fn tampered(backend: Backend, tamper: &str) -> Option<u64> {
    let postgres = backend == Backend::Postgres;
    let f = fixture(backend).await;
    f.log.integrate().await.unwrap();
    f.log
        .append(
            &(0..8)
                .map(|i| event(i, Some(&"c".repeat(64))))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    f.log.integrate().await.unwrap();
    f.log
        .append(&(8..20).map(|i| event(i, None)).collect::<Vec<_>>())
        .await
        .unwrap();
    f.log.integrate().await.unwrap();
    assert!(verify(f.log.store(), &f.keys).await.unwrap().is_ok());
    let drop_triggers: &[&str] = if postgres {
        &[
            "ALTER TABLE audit_entries DISABLE TRIGGER USER",
            "ALTER TABLE audit_tree_heads DISABLE TRIGGER USER",
        ]
    } else {
        &[
            "DROP TRIGGER audit_entries_no_update",
            "DROP TRIGGER audit_entries_no_delete",
            "DROP TRIGGER audit_tree_heads_no_update",
            "DROP TRIGGER audit_tree_heads_no_delete",
        ]
    };
    let mut conn = f.db.pool().acquire().await.unwrap();
    for sql in drop_triggers
        .iter()
        .copied()
        .chain(tamper.split(';').map(str::trim).filter(|s| !s.is_empty()))
    {
        sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    drop(conn);
    let report = verify(f.log.store(), &f.keys).await.unwrap();
    let seq = report.problem.as_ref().map(|p| p.seq);
    // `custodia audit verify` reads through a native connection: same finding.
    let direct = verify_url(&f.url.clone().into(), "audit_log", &f.keys)
        .await
        .unwrap();
    assert_eq!(direct.problem, report.problem, "{tamper}");
    f.done().await;
    seq
}

async fn tampering_is_located(backend: Backend) {
    let postgres = backend == Backend::Postgres;
    let blob = |hex: &str| {
        if postgres {
            format!("'\\x{hex}'::bytea")
        } else {
            format!("X'{hex}'")
        }
    };
    // A flipped byte in an entry (the 'crm' actor inside entry 5's bytes).
    let flip = if postgres {
        "UPDATE audit_entries SET entry = overlay(entry placing '\\x58'::bytea from 30 for 1) WHERE seq = 5"
    } else {
        "UPDATE audit_entries SET entry = CAST(substr(entry, 1, 29) || X'58' || substr(entry, 31) AS BLOB) WHERE seq = 5"
    };
    assert_eq!(tampered(backend, flip).await, Some(5), "bit flip");
    // A deleted entry.
    assert_eq!(
        tampered(backend, "DELETE FROM audit_entries WHERE seq = 12").await,
        Some(12),
        "delete"
    );
    // Two entries swapped (reordered).
    assert_eq!(
        tampered(
            backend,
            "UPDATE audit_entries SET seq = 1000 WHERE seq = 9; UPDATE audit_entries SET seq = 9 WHERE seq = 10; UPDATE audit_entries SET seq = 10 WHERE seq = 1000"
        )
        .await,
        Some(9),
        "reorder"
    );
    // An entry inserted in the middle (later ones shifted up by one).
    assert_eq!(
        tampered(
            backend,
            "UPDATE audit_entries SET seq = seq + 100 WHERE seq >= 14; UPDATE audit_entries SET seq = seq - 99 WHERE seq >= 114; \
             INSERT INTO audit_entries SELECT 14, 'forged', entry, leaf_hash, time_us, actor, service, method, action, resource, purpose, outcome, appended_us FROM audit_entries WHERE seq = 13"
        )
        .await,
        Some(14),
        "insert"
    );
    // Truncated: the last entries removed.
    assert_eq!(
        tampered(backend, "DELETE FROM audit_entries WHERE seq >= 17").await,
        Some(17),
        "truncate"
    );
    // A query column changed (searches by actor would miss the entry): named even
    // when the new value only moves characters between two columns.
    assert_eq!(
        tampered(
            backend,
            "UPDATE audit_entries SET actor = 'someone-else' WHERE seq = 7"
        )
        .await,
        Some(7),
        "query column"
    );
    assert_eq!(
        tampered(
            backend,
            "UPDATE audit_entries SET actor = actor || service, service = '' WHERE seq = 3"
        )
        .await,
        Some(3),
        "characters moved between query columns"
    );
    // A forked head: the head at size 20 replaced by one over different data.
    let forged_root = blob(&"00".repeat(32));
    let fork =
        format!("UPDATE audit_tree_heads SET root_hash = {forged_root} WHERE tree_size = 20");
    assert_eq!(
        tampered(backend, &fork).await,
        Some(8),
        "forked head: first entry after the last good head"
    );
}

custodia_tests::both_backends!(tampering_is_located);

/// A log with more heads than the verifier reads per page (1,000): every head is
/// checked, and a forged one past the first page is still located.
#[tokio::test]
async fn verification_pages_through_many_heads() {
    let f = fixture(Backend::Sqlite).await;
    let events: Vec<_> = (0..1_205).map(|i| event(i, None)).collect();
    f.log.append(&events).await.unwrap();
    f.log.sync_tree().await.unwrap();
    // A head at every size, signed as the integrator signs them.
    for size in 1..=1_205u64 {
        let root = f.log.root(size).await.unwrap();
        let timestamp_ms = 1_700_000_000_000 + size;
        f.log
            .store()
            .insert_head(&StoredHead {
                tree_size: size,
                root,
                timestamp_us: timestamp_ms as i64 * 1000,
                key_id: f.log.signer().key_id().to_string(),
                signature: f.log.signer().sign(size, timestamp_ms, &root).to_vec(),
            })
            .await
            .unwrap();
    }
    let report = verify(f.log.store(), &f.keys).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.entries, report.heads), (1_205, 1_205));

    let mut conn = f.db.pool().acquire().await.unwrap();
    for sql in [
        "DROP TRIGGER audit_tree_heads_no_update",
        "UPDATE audit_tree_heads SET root_hash = X'0000000000000000000000000000000000000000000000000000000000000000' WHERE tree_size = 1100",
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    drop(conn);
    let report = verify(f.log.store(), &f.keys).await.unwrap();
    let problem = report.problem.expect("the forged head is found");
    assert_eq!(problem.seq, 1_099, "{}", problem.reason);
    assert_eq!(report.heads, 1_099, "every head before it checked");
    f.done().await;
}
