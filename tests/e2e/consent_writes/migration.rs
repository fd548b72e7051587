//! A database written before the state table changed form keeps every state.

use custodia_consent::store::ConsentStore;
use custodia_core::{ServiceName, storage};
use custodia_proto::consent::v1::{ConsentEvent, ConsentState};
use custodia_tests::{Backend, TestStore};

use super::{job, record};

custodia_tests::both_backends!(states_survive_the_state_table_migration);

/// A database written before the evidence was read from `consent_events` (and, on
/// SQLite, `subject_consents` lost its copy of the event bodies and became a table
/// clustered on its key) keeps every state, reads the evidence from the event, and
/// still moves the erasure epoch.
async fn states_survive_the_state_table_migration(backend: Backend) {
    const WITHOUT_BODY: i64 = 20261204000100;
    let fixture = TestStore::open(backend, ServiceName::Consent).await;
    let db = fixture.db.clone();
    let earlier = |all: &sqlx::migrate::Migrator| -> &'static sqlx::migrate::Migrator {
        Box::leak(Box::new(sqlx::migrate::Migrator::with_migrations(
            all.migrations
                .iter()
                .filter(|m| m.version < WITHOUT_BODY)
                .cloned()
                .collect(),
        )))
    };
    let all = &custodia_consent::MIGRATIONS;
    db.migrate(&storage::Migrations {
        sqlite: earlier(all.sqlite),
        postgres: earlier(all.postgres),
    })
    .await
    .unwrap();
    let event = |subject: &str, purpose: &str, state: ConsentState| ConsentEvent {
        name: format!("consentEvents/{subject}-{purpose}"),
        purpose: format!("purposes/{purpose}"),
        state: state as i32,
        ..Default::default()
    };
    let rows = [
        (
            1_i64,
            event("ada", "newsletter", ConsentState::Granted),
            Some(5_000_i64),
        ),
        (2, event("ada", "analytics", ConsentState::Denied), None),
        (
            3,
            event("bob", "newsletter", ConsentState::Granted),
            Some(9_000),
        ),
    ];
    for (seq, e, expire_us) in &rows {
        let (subject, purpose) = e.name["consentEvents/".len()..].split_once('-').unwrap();
        let body = prost::Message::encode_to_vec(e);
        sqlx::query(
            "INSERT INTO consent_events (seq, event_id, subject_hash, purpose_id, state, body, \
             decision_us, record_us) VALUES ($1, $2, $3, $4, $5, $6, 1000, 2000)",
        )
        .bind(*seq)
        .bind(e.name.clone())
        .bind(subject.to_string())
        .bind(purpose.to_string())
        .bind(i64::from(e.state))
        .bind(body)
        .execute(db.pool())
        .await
        .unwrap();
        // A copy that differs from the event: what is answered must be the event.
        let stale = prost::Message::encode_to_vec(&ConsentEvent {
            name: "consentEvents/stale-copy".into(),
            ..Default::default()
        });
        sqlx::query(
            "INSERT INTO subject_consents (subject_hash, purpose_id, state, decision_us, \
             expire_us, event_id, body) VALUES ($1, $2, $3, 1000, $4, $5, $6)",
        )
        .bind(subject.to_string())
        .bind(purpose.to_string())
        .bind(i64::from(e.state))
        .bind(*expire_us)
        .bind(e.name.clone())
        .bind(stale)
        .execute(db.pool())
        .await
        .unwrap();
    }
    sqlx::query("UPDATE consent_change_seq SET next = 4 WHERE id = 1")
        .execute(db.pool())
        .await
        .unwrap();

    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let store = ConsentStore::new(db.clone());
    let states = store
        .states(&["ada", "bob", "eve"], "newsletter")
        .await
        .unwrap();
    assert_eq!(states.len(), 2);
    let ada = states["ada"].0.clone().unwrap();
    assert_eq!(
        (ada.state, ada.decision_us, ada.expire_us),
        (ConsentState::Granted, 1000, Some(5_000))
    );
    let current = store.subject_states(&["ada".into()]).await.unwrap();
    assert_eq!(
        current
            .iter()
            .map(|(purpose, _, _, e)| (purpose.as_str(), e.clone()))
            .collect::<Vec<_>>(),
        [
            ("analytics", rows[1].1.clone()),
            ("newsletter", rows[0].1.clone())
        ],
        "the evidence comes from the event"
    );
    let due = store
        .reconsent_due("newsletter", 10_000, None, None, 10)
        .await
        .unwrap();
    assert_eq!(
        due.iter()
            .map(|(exp, subject, _, e)| (*exp, subject.as_str(), e.name.as_str()))
            .collect::<Vec<_>>(),
        [
            (5_000, "ada", rows[0].1.name.as_str()),
            (9_000, "bob", rows[2].1.name.as_str())
        ]
    );
    // New writes go on from the migrated counter, into the new table.
    let results = store
        .record_all(vec![job(
            "WithdrawConsent",
            "",
            vec![record("ada", "newsletter", ConsentState::Withdrawn)],
        )])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(store.last_change().await.unwrap(), 4);
    let ada = store.states(&["ada"], "newsletter").await.unwrap()["ada"]
        .0
        .clone()
        .unwrap();
    assert_eq!(ada.state, ConsentState::Withdrawn);
    let before = store.erasure_epoch().await.unwrap();
    store.erase(&["bob".to_string()], 0).await.unwrap();
    assert!(
        store.erasure_epoch().await.unwrap() > before,
        "trigger kept"
    );

    fixture.close().await;
}
