//! The consent store's group commit, below the API: the jobs of one group
//! commit together with gap-free change numbers, replays answer the first
//! call's events, and keys are bound to the caller and the body.

use std::collections::BTreeMap;

use custodia_consent::{
    records::{Receipt, WriteJob},
    store::ConsentStore,
};
use custodia_core::{
    idempotency::RequestKey,
    outbox::{OutboxStore, SqlOutbox},
};
use custodia_proto::consent::v1::{
    ConsentEvent, ConsentReceipt, ConsentState, RecordConsentRequest,
};
use custodia_tests::{Backend, TestStore};

use super::{job, job_with_body, names, record};

custodia_tests::both_backends!(keys_bound_to_caller_and_body, group_of_jobs);

/// Keys of a group are bound to the caller and the body: a key reused with
/// another body is refused, from the database and within a group; another
/// principal's use of the key is a call of its own.
async fn keys_bound_to_caller_and_body(backend: Backend) {
    let fixture = TestStore::consent(backend).await;
    let db = fixture.db.clone();
    let store = ConsentStore::new(db.clone());
    let first = job(
        "RecordConsent",
        "r1",
        vec![record("ada", "newsletter", ConsentState::Granted)],
    );
    store.record_all(vec![first.clone()]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let mut other = job(
        "RecordConsent",
        "r1",
        vec![record("cy", "newsletter", ConsentState::Granted)],
    );
    other.key = RequestKey::new(
        "moodle",
        "RecordConsent",
        "r1",
        &RecordConsentRequest {
            request_id: "r1".into(),
            ..Default::default()
        },
    );
    let results = store
        .record_all(vec![
            job_with_body(
                "RecordConsent",
                "r1",
                "other body",
                vec![record("cy", "newsletter", ConsentState::Granted)],
            ),
            job_with_body(
                "RecordConsent",
                "r3",
                "",
                vec![record("cy", "analytics", ConsentState::Granted)],
            ),
            job_with_body(
                "RecordConsent",
                "r3",
                "other body",
                vec![record("cy", "analytics", ConsentState::Denied)],
            ),
            other.clone(),
            first.clone(),
        ])
        .await
        .unwrap();
    let code = |r: &Result<Vec<ConsentEvent>, custodia_core::ApiError>| match r {
        Err(custodia_core::ApiError::FailedPrecondition { reason, .. }) => *reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let events_of = |j: &WriteJob| {
        j.records
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(code(&results[0]), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(results[1].as_ref().unwrap().len(), 1);
    assert_eq!(code(&results[2]), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(results[3].as_ref().unwrap(), &events_of(&other));
    assert_eq!(results[4].as_ref().unwrap(), &events_of(&first), "a replay");
    // ada, then cy's analytics grant and moodle's own call: nothing refused wrote.
    assert_eq!(store.last_change().await.unwrap(), 3);
    fixture.close().await;
}

/// A group with replays inside it, a request id reused by another method, the
/// same subject and purpose twice and an empty write; then a later group
/// replaying from the database, a job failing alone, a group too large for one
/// statement, and the erasure epoch.
async fn group_of_jobs(backend: Backend) {
    let fixture = TestStore::consent(backend).await;
    let db = fixture.db.clone();
    let store = ConsentStore::new(db.clone());
    let outbox = SqlOutbox::new(db.clone());

    let mut a = job(
        "RecordConsent",
        "r1",
        vec![record("ada", "newsletter", ConsentState::Granted)],
    );
    a.receipt = Some(Receipt {
        id: "receipt-a".into(),
        subject_hash: "ada".into(),
        body: prost::Message::encode_to_vec(&ConsentReceipt {
            name: "receipts/receipt-a".into(),
            ..Default::default()
        }),
    });
    // Same request id as `a` in the same group: replays `a`, writes nothing.
    let b = job(
        "RecordConsent",
        "r1",
        vec![record("ada", "newsletter", ConsentState::Denied)],
    );
    // Same request id, other method: a call of its own.
    let c = job(
        "WithdrawConsent",
        "r1",
        vec![record("ada", "newsletter", ConsentState::Withdrawn)],
    );
    // The same subject and purpose twice in one job, and again in a later job.
    let d = job(
        "RecordConsent",
        "r2",
        vec![
            record("bob", "newsletter", ConsentState::Granted),
            record("bob", "newsletter", ConsentState::Denied),
            record("bob", "analytics", ConsentState::Granted),
        ],
    );
    let e = job("RecordObjection", "", vec![]);
    let f = job(
        "RecordConsent",
        "",
        vec![record("bob", "analytics", ConsentState::Denied)],
    );
    let jobs = vec![a.clone(), b, c.clone(), d.clone(), e, f.clone()];
    let results: Vec<Vec<ConsentEvent>> = store
        .record_all(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let events_of = |j: &WriteJob| {
        j.records
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(results[0], events_of(&a));
    assert_eq!(results[1], events_of(&a), "replayed inside the group");
    assert_eq!(results[2], events_of(&c));
    assert_eq!(results[3], events_of(&d));
    assert!(results[4].is_empty());
    assert_eq!(results[5], events_of(&f));

    // Change numbers are gap-free and in job order; the last write per key wins.
    let changes = store.changes(0, &[], 100).await.unwrap();
    let seqs: Vec<i64> = changes.iter().map(|c| c.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let written: Vec<ConsentEvent> = [&a, &c, &d, &f].into_iter().flat_map(events_of).collect();
    assert_eq!(
        changes
            .iter()
            .map(|c| c.3.name.as_str())
            .collect::<Vec<_>>(),
        names(&written)
    );
    assert_eq!(store.last_change().await.unwrap(), 6);
    let state = |subject: &'static str, purpose: &'static str| {
        let store = store.clone();
        async move {
            store.states(&[subject], purpose).await.unwrap()[subject]
                .0
                .clone()
                .unwrap()
                .state
        }
    };
    assert_eq!(state("ada", "newsletter").await, ConsentState::Withdrawn);
    assert_eq!(state("bob", "newsletter").await, ConsentState::Denied);
    assert_eq!(state("bob", "analytics").await, ConsentState::Denied);
    let current = store.subject_states(&["bob".into()]).await.unwrap();
    let current: BTreeMap<_, _> = current.into_iter().map(|s| (s.0, s.3.name)).collect();
    assert_eq!(current["newsletter"], d.records[1].event.name);
    assert_eq!(current["analytics"], f.records[0].event.name);
    let receipt = store.receipt("receipt-a").await.unwrap().unwrap();
    assert_eq!(receipt.name, "receipts/receipt-a");
    // One access event per job, replays included (a replay's answer holds the
    // subject's data: it is an access too).
    assert_eq!(outbox.pending().await.unwrap(), 6);

    // A later group replays from the database: the first call's events, no writes.
    let again = store
        .record_all(vec![
            job("RecordConsent", "r2", vec![]),
            job(
                "RecordConsent",
                "r1",
                vec![record("ada", "newsletter", ConsentState::Granted)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap(), &events_of(&d));
    assert_eq!(again[1].as_ref().unwrap(), &events_of(&a));
    assert_eq!(store.last_change().await.unwrap(), 6);
    assert_eq!(outbox.pending().await.unwrap(), 8);

    // A job that cannot be written (its receipt id is taken) fails alone, whatever
    // group it lands in; the others commit with gap-free change numbers.
    let mut bad = job(
        "RecordConsent",
        "",
        vec![record("eve", "newsletter", ConsentState::Granted)],
    );
    bad.receipt = a.receipt.clone();
    let mut calls = Vec::new();
    for i in 0..9 {
        let store = store.clone();
        let j = if i == 4 {
            bad.clone()
        } else {
            job(
                "RecordConsent",
                &format!("ok-{i}"),
                vec![record("eve", "analytics", ConsentState::Granted)],
            )
        };
        calls.push(tokio::spawn(async move {
            let WriteJob {
                key,
                records,
                receipt,
                access,
                now_us,
            } = j;
            store
                .record(
                    key.as_ref(),
                    &records,
                    receipt
                        .as_ref()
                        .map(|r| (r.id.as_str(), r.subject_hash.as_str(), r.body.clone())),
                    &access,
                    now_us,
                )
                .await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        assert_eq!(result.is_err(), i == 4, "{i}: {result:?}");
    }
    let seqs: Vec<i64> = store
        .changes(0, &[], 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(seqs, (1..=14).collect::<Vec<_>>());
    let states = store.states(&["eve"], "newsletter").await.unwrap();
    assert!(!states.contains_key("eve"), "the failed job wrote nothing");

    // A group too large for one PostgreSQL statement (2,500 records: 37,500
    // parameters) is written statement by statement, numbered the same way.
    let big: Vec<WriteJob> = (0..25)
        .map(|j| {
            job(
                "RecordConsent",
                &format!("big-{j}"),
                (0..100)
                    .map(|i| record(&format!("s{j}-{i}"), "newsletter", ConsentState::Granted))
                    .collect(),
            )
        })
        .collect();
    let last_big = big[24].records[99].event.name.clone();
    for r in store.record_all(big).await.unwrap() {
        assert_eq!(r.unwrap().len(), 100);
    }
    let changes = store.changes(14, &[], 5_000).await.unwrap();
    let seqs: Vec<i64> = changes.iter().map(|c| c.0).collect();
    assert_eq!(seqs, (15..=2_514).collect::<Vec<_>>());
    assert_eq!(changes.last().unwrap().3.name, last_big);
    assert_eq!(store.last_change().await.unwrap(), 2_514);

    // Erasing a subject's grant moves the erasure epoch that other replicas'
    // caches watch (a trigger on subject_consents, whatever code deletes the
    // states); a withdrawal kept through the erasure leaves it (no state changes).
    let before = store.erasure_epoch().await.unwrap();
    let erased = store.erase(&["s0-0".to_string()], 0).await.unwrap();
    assert_eq!((erased.events, erased.kept.len()), (1, 0));
    let after = store.erasure_epoch().await.unwrap();
    assert!(after > before);
    let ada = store.erase(&["ada".to_string()], 0).await.unwrap();
    assert_eq!(ada.kept.len(), 1, "{ada:?}");
    assert_eq!(store.erasure_epoch().await.unwrap(), after);
    // Erasing someone without a consent record (dsar asks for every erasure)
    // leaves it: each move makes every replica reload its state index.
    let erased = store
        .erase(&["nobody".to_string()], 0)
        .await
        .unwrap()
        .events;
    assert_eq!(erased, 0);
    assert_eq!(store.erasure_epoch().await.unwrap(), after);

    fixture.close().await;
}
