//! Consent writes committed in groups, on both backends: a group of jobs written
//! together (replays inside the group and from earlier groups, the same subject and
//! purpose twice, empty writes, a failing job failing alone), and many concurrent
//! RecordConsent / WithdrawConsent calls through the API ending in the state of the
//! last write per subject and purpose, with gap-free change numbers.

use std::collections::{BTreeMap, HashMap};

use custodia_consent::{
    records::{NewRecord, Receipt, WriteJob},
    store::ConsentStore,
};
use custodia_core::{
    ServiceName,
    idempotency::RequestKey,
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox},
    storage,
};
use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{
        ConsentChannel, ConsentEvent, ConsentReceipt, ConsentState, CreatePurposeRequest, Decision,
        Evidence, LawfulBasis, ListConsentEventsRequest, ListSubjectConsentsRequest, Notice,
        PublishNoticeRequest, Purpose, PurposeCategory, PurposeDecision, RecordConsentRequest,
        WatchConsentChangesRequest, WithdrawConsentRequest,
        consent_service_client::ConsentServiceClient, notice::Content,
    },
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, authed, email, test_config};

fn record(subject: &str, purpose: &str, state: ConsentState) -> NewRecord {
    NewRecord {
        subject_hash: subject.into(),
        purpose_id: purpose.into(),
        event: ConsentEvent {
            name: format!("consentEvents/{}", uuid::Uuid::now_v7().simple()),
            purpose: format!("purposes/{purpose}"),
            state: state as i32,
            ..Default::default()
        },
        decision_us: 1_000,
        expire_us: None,
    }
}

fn job(method: &str, request_id: &str, records: Vec<NewRecord>) -> WriteJob {
    job_with_body(method, request_id, "", records)
}

/// A job whose request carried `body` (the part of the request its key's
/// fingerprint covers besides the request id).
fn job_with_body(method: &str, request_id: &str, body: &str, records: Vec<NewRecord>) -> WriteJob {
    let request = RecordConsentRequest {
        request_id: request_id.into(),
        subject: Some(SubjectRef {
            r#type: "email".into(),
            value: body.into(),
        }),
        ..Default::default()
    };
    WriteJob {
        key: RequestKey::new("test", method, request_id, &request),
        records,
        receipt: None,
        access: AccessEvent::new(
            chrono::Utc::now(),
            "test",
            "custodia.consent.v1.ConsentService",
            method,
            Outcome::Ok,
        ),
        now_us: 2_000,
    }
}

fn names(events: &[ConsentEvent]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// Keys of a group are bound to the caller and the body: a key reused with
/// another body is refused, from the database and within a group; another
/// principal's use of the key is a call of its own.
async fn keys_bound_to_caller_and_body(backend: Backend) {
    let (config, _dir, pg) = test_config(backend).await;
    let db = storage::open_service(&config, ServiceName::Consent)
        .await
        .unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
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
    db.close().await;
    if let Some(pg) = pg {
        pg.drop_now().await;
    }
}

custodia_tests::both_backends!(keys_bound_to_caller_and_body);

async fn group_of_jobs(backend: Backend) {
    let (config, _dir, pg) = test_config(backend).await;
    let db = storage::open_service(&config, ServiceName::Consent)
        .await
        .unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
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

    // Erasing a subject moves the erasure epoch that other replicas' caches watch
    // (a trigger on subject_consents, whatever code deletes the states).
    let before = store.erasure_epoch().await.unwrap();
    let (erased, _) = store.erase(&["ada".to_string()]).await.unwrap();
    assert!(erased > 0);
    let after = store.erasure_epoch().await.unwrap();
    assert!(after > before);
    // Erasing someone without a consent record (dsar asks for every erasure)
    // leaves it: each move makes every replica reload its state index.
    let (erased, _) = store.erase(&["nobody".to_string()]).await.unwrap();
    assert_eq!(erased, 0);
    assert_eq!(store.erasure_epoch().await.unwrap(), after);

    db.close().await;
    if let Some(pg) = pg {
        pg.drop_now().await;
    }
}

custodia_tests::both_backends!(group_of_jobs);

/// One distinct write of the concurrency test; tasks with the same write send the
/// same request (same request id), as a client retrying would.
enum Write {
    Grant(RecordConsentRequest),
    Withdraw(WithdrawConsentRequest),
}

fn write(w: usize, notice: &str, now: i64) -> Write {
    let subject = email(&format!("s{}@example.edu", w % 8));
    let evidence = Evidence {
        collect_time: Some(prost_types::Timestamp {
            seconds: now,
            nanos: 0,
        }),
        channel: ConsentChannel::WebForm as i32,
        notice: notice.into(),
        ..Default::default()
    };
    // The first 16 writes are each sent twice with one request id; of the others,
    // every third has no request id. Each subject gets six writes: grant, deny,
    // withdraw, twice over.
    let request_id = if w >= 16 && w.is_multiple_of(3) {
        String::new()
    } else {
        format!("write-{w}")
    };
    let kind = (w / 8) % 3;
    if kind == 2 {
        return Write::Withdraw(WithdrawConsentRequest {
            subject: Some(subject),
            purposes: vec!["purposes/newsletter".into()],
            evidence: Some(evidence),
            reason: "unsubscribe".into(),
            request_id,
            ..Default::default()
        });
    }
    let decision = if kind == 0 {
        Decision::Granted
    } else {
        Decision::Denied
    };
    let mut decisions = vec![PurposeDecision {
        purpose: "purposes/newsletter".into(),
        decision: decision as i32,
    }];
    if w.is_multiple_of(5) {
        decisions.push(PurposeDecision {
            purpose: "purposes/enrolment".into(),
            decision: Decision::Granted as i32,
        });
    }
    Write::Grant(RecordConsentRequest {
        subject: Some(subject),
        decisions,
        evidence: Some(evidence),
        request_id,
        ..Default::default()
    })
}

async fn concurrent_writes(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = ConsentServiceClient::new(app.channel().await);
    for (id, basis) in [
        ("newsletter", LawfulBasis::Consent),
        ("enrolment", LawfulBasis::Contract),
    ] {
        c.create_purpose(authed(
            CreatePurposeRequest {
                purpose_id: id.into(),
                purpose: Some(Purpose {
                    display_name: id.into(),
                    lawful_basis: basis as i32,
                    category: PurposeCategory::Communication as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
    }
    let notice = c
        .publish_notice(authed(
            PublishNoticeRequest {
                notice_id: "privacy".into(),
                notice: Some(Notice {
                    title: "Privacy policy".into(),
                    content: Some(Content::Text("We send a newsletter.".into())),
                    purposes: vec!["purposes/newsletter".into()],
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap()
        .name;

    let now = custodia_core::legal_time::Clock::now(&*app.clock).timestamp();

    // 64 calls at once: 16 writes sent twice, 32 sent once; 8 subjects.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let w = if i < 32 { i / 2 } else { i - 16 };
            let mut c = c.clone();
            let request = write(w, &notice, now);
            tokio::spawn(async move {
                let events = match request {
                    Write::Grant(r) => {
                        c.record_consent(authed(r, ADMIN_TOKEN))
                            .await?
                            .into_inner()
                            .events
                    }
                    Write::Withdraw(r) => {
                        c.withdraw_consent(authed(r, ADMIN_TOKEN))
                            .await?
                            .into_inner()
                            .events
                    }
                };
                Ok::<_, tonic::Status>((w, events))
            })
        })
        .collect();
    let mut by_write: HashMap<usize, Vec<String>> = HashMap::new();
    for t in tasks {
        let (w, events) = t.await.unwrap().unwrap();
        let got: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
        assert!(!got.is_empty());
        if let Some(first) = by_write.insert(w, got.clone()) {
            assert_eq!(first, got, "a retry replays the first call's events");
        }
    }
    assert_eq!(by_write.len(), 48);
    let total: usize = by_write.values().map(Vec::len).sum();

    // A retry after the fact still replays, writing nothing.
    let Write::Grant(retry) = write(0, &notice, now) else {
        unreachable!()
    };
    let replayed = c
        .record_consent(authed(retry, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        replayed.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        by_write[&0]
    );

    // The change stream from the start: every event once, seqs 1..=total.
    let mut stream = c
        .watch_consent_changes(authed(
            WatchConsentChangesRequest {
                start_time: Some(prost_types::Timestamp::default()),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut order = Vec::new();
    while order.len() < total {
        let m = tokio::time::timeout(std::time::Duration::from_secs(15), stream.message())
            .await
            .expect("a change within 15 s")
            .unwrap()
            .expect("stream open");
        let Some(event) = m.event else { continue };
        let seq = custodia_consent::watch::parse_cursor(&m.cursor)
            .unwrap()
            .unwrap();
        order.push((seq, event.name));
    }
    let seqs: Vec<i64> = order.iter().map(|o| o.0).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "gap-free");
    let mut streamed: Vec<&String> = order.iter().map(|o| &o.1).collect();
    streamed.sort();
    let mut written: Vec<&String> = by_write.values().flatten().collect();
    written.sort();
    assert_eq!(streamed, written, "each written event exactly once");

    // Per subject: the trail is in change order, and the current state of each
    // purpose is its last event.
    let position: HashMap<&str, i64> = order.iter().map(|(s, n)| (n.as_str(), *s)).collect();
    for s in 0..8 {
        let subject = email(&format!("s{s}@example.edu"));
        let trail = c
            .list_consent_events(authed(
                ListConsentEventsRequest {
                    subject_identifiers: vec![subject.clone()],
                    page_size: 1000,
                    ..Default::default()
                },
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        let seqs: Vec<i64> = trail.iter().map(|e| position[e.name.as_str()]).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let expected = by_write
            .iter()
            .filter(|(w, _)| *w % 8 == s)
            .map(|(_, e)| e.len())
            .sum::<usize>();
        assert_eq!(trail.len(), expected);
        let mut last: BTreeMap<&str, &ConsentEvent> = BTreeMap::new();
        for e in &trail {
            last.insert(e.purpose.as_str(), e);
        }
        let consents = c
            .list_subject_consents(authed(
                ListSubjectConsentsRequest {
                    subject_identifiers: vec![subject.clone()],
                    ..Default::default()
                },
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner()
            .consents;
        assert_eq!(consents.len(), last.len());
        for consent in consents {
            let event = last[consent.purpose.as_str()];
            assert_eq!(consent.consent_event, event.name);
            assert_eq!(consent.state, event.state);
        }
        let allowed = c
            .check_consent(authed(
                custodia_proto::consent::v1::CheckConsentRequest {
                    subject: Some(subject),
                    purpose: "purposes/newsletter".into(),
                },
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap()
            .allowed;
        assert_eq!(
            allowed,
            last["purposes/newsletter"].state == ConsentState::Granted as i32
        );
    }
    app.stop().await;
}

custodia_tests::both_backends!(concurrent_writes);

/// A database written before the evidence was read from `consent_events` (and, on
/// SQLite, `subject_consents` lost its copy of the event bodies and became a table
/// clustered on its key) keeps every state, reads the evidence from the event, and
/// still moves the erasure epoch.
async fn states_survive_the_state_table_migration(backend: Backend) {
    const WITHOUT_BODY: i64 = 20261204000100;
    let (config, _dir, pg) = test_config(backend).await;
    let db = storage::open_service(&config, ServiceName::Consent)
        .await
        .unwrap();
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
    store.erase(&["bob".to_string()]).await.unwrap();
    assert!(
        store.erasure_epoch().await.unwrap() > before,
        "trigger kept"
    );

    db.close().await;
    if let Some(pg) = pg {
        pg.drop_now().await;
    }
}

custodia_tests::both_backends!(states_survive_the_state_table_migration);

/// Two replicas writing the same (subject, purpose) keys at the same moment, each
/// in the opposite order, both succeed: their writes lock the keys in one order.
/// (Without it, both wait for a key a third transaction holds, each already holding
/// keys the other needs next: when it lets go, PostgreSQL finds a deadlock and
/// fails one of them.)
#[tokio::test]
async fn replicas_writing_the_same_keys_in_opposite_orders_both_succeed_postgres() {
    let (config, _dir, pg) = test_config(Backend::Postgres).await;
    let open = || async {
        let db = storage::open_service(&config, ServiceName::Consent)
            .await
            .unwrap();
        db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
        db
    };
    let (a, b, c) = (open().await, open().await, open().await);
    let (one, two) = (ConsentStore::new(a.clone()), ConsentStore::new(b.clone()));
    let purposes = ["alumni", "analytics", "newsletter", "research", "surveys"];
    let write = |state: ConsentState, reversed: bool| {
        let mut records: Vec<NewRecord> =
            purposes.iter().map(|p| record("ada", p, state)).collect();
        if reversed {
            records.reverse();
        }
        vec![job("RecordConsent", "", records)]
    };
    let first = one.record_all(write(ConsentState::Granted, false)).await;
    assert!(first.unwrap()[0].is_ok());

    // A third transaction holds the middle key while both writes start.
    let mut holder = c.pool().begin().await.unwrap();
    sqlx::query(
        "SELECT state FROM subject_consents WHERE subject_hash = 'ada' \
         AND purpose_id = 'newsletter' FOR UPDATE",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let forward = tokio::spawn({
        let one = one.clone();
        let jobs = write(ConsentState::Denied, false);
        async move { one.record_all(jobs).await }
    });
    let backward = tokio::spawn({
        let two = two.clone();
        let jobs = write(ConsentState::Withdrawn, true);
        async move { two.record_all(jobs).await }
    });
    // Both writes wait for a lock before the holder lets go.
    for poll in 0.. {
        assert!(poll < 50_000, "the writes never waited for the held key");
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(c.pool())
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    holder.commit().await.unwrap();
    let (x, y) = (
        forward.await.unwrap().unwrap(),
        backward.await.unwrap().unwrap(),
    );
    assert!(
        x[0].is_ok() && y[0].is_ok(),
        "{:?} {:?}",
        x[0].as_ref().err(),
        y[0].as_ref().err()
    );
    // A deadlock would not show as a failure (the write is retried, counter
    // first, a second later): PostgreSQL counts it, reported at the latest when
    // the connections close.
    for db in [a, b, c] {
        db.close().await;
    }
    let d = open().await;
    let deadlocks: i64 = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(d.pool())
    .await
    .unwrap();
    assert_eq!(deadlocks, 0, "no deadlock between the two writes");
    d.close().await;
    if let Some(pg) = pg {
        pg.drop_now().await;
    }
}

/// The state index (every subject's states in memory) loaded page by page from a
/// real database answers what the table holds; a subject marked stale is not
/// answered until it is read again, and then answers its new state; an index too
/// big for its bound turns itself off.
async fn state_index_follows_the_table(backend: Backend) {
    use custodia_consent::{index::StateIndex, records::DIRECT_MARKETING};
    let (config, _dir, pg) = test_config(backend).await;
    let db = storage::open_service(&config, ServiceName::Consent)
        .await
        .unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let store = ConsentStore::new(db.clone());
    let hash = |i: usize| format!("{i:064x}");
    let state_of = |i: usize| match i % 4 {
        0 => ConsentState::Granted,
        1 => ConsentState::Denied,
        2 => ConsentState::Withdrawn,
        _ => ConsentState::Objected,
    };
    // 1,200 subjects: newsletter states, a third also analytics, every seventh an
    // objection to direct marketing.
    let jobs: Vec<WriteJob> = (0..1_200)
        .map(|i| {
            let mut records = vec![record(&hash(i), "newsletter", state_of(i))];
            if i % 3 == 0 {
                records.push(record(&hash(i), "analytics", ConsentState::Granted));
            }
            if i % 7 == 0 {
                records.push(record(&hash(i), DIRECT_MARKETING, ConsentState::Objected));
            }
            job("RecordConsent", &format!("r{i}"), records)
        })
        .collect();
    for r in store.record_all(jobs).await.unwrap() {
        r.unwrap();
    }
    let subjects: Vec<String> = (0..1_250).map(hash).collect();
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let agrees = async |index: &StateIndex, purpose: &str| {
        let db = store.states(&refs, purpose).await.unwrap();
        let no = index.purpose_no(purpose);
        for s in &subjects {
            let want = db.get(s).cloned().unwrap_or_default();
            assert_eq!(index.lookup(s, purpose, no), Some(want), "{s} {purpose}");
        }
    };

    let index = StateIndex::new(10_000);
    assert!(index.wants_load());
    // Pages of 500 rows: ~1,800 rows take four.
    index.load_pages(&store, 500).await.unwrap();
    assert!(!index.serving(), "not before the first refresh");
    assert_eq!(index.lookup(&hash(0), "newsletter", None), None);
    index.refresh(&store).await.unwrap();
    assert!(index.serving());
    agrees(&index, "newsletter").await;
    agrees(&index, "analytics").await;
    agrees(&index, "never-used").await;

    // Another replica changes two subjects and erases a third; until the follower
    // marks them the index still holds what it read (the follower's poll bounds
    // that); marked, they are not answered; read again, they agree.
    let changed = vec![
        job(
            "WithdrawConsent",
            "w1",
            vec![record(&hash(0), "newsletter", ConsentState::Withdrawn)],
        ),
        job(
            "RecordConsent",
            "w2",
            vec![record(&hash(1_240), "newsletter", ConsentState::Granted)],
        ),
    ];
    for r in store.record_all(changed).await.unwrap() {
        r.unwrap();
    }
    store.erase(&[hash(4)]).await.unwrap();
    for i in [0, 1_240, 4] {
        index.mark_stale(&hash(i));
        assert_eq!(index.lookup(&hash(i), "newsletter", None), None);
    }
    index.refresh(&store).await.unwrap();
    agrees(&index, "newsletter").await;
    assert_eq!(
        index.lookup(&hash(0), "newsletter", index.purpose_no("newsletter")),
        Some((
            Some(custodia_consent::decision::StateRow {
                state: ConsentState::Withdrawn,
                decision_us: 1_000,
                expire_us: None,
            }),
            true
        ))
    );
    assert_eq!(
        index.lookup(&hash(4), "newsletter", None),
        Some((None, false))
    );

    // A reset (erasure elsewhere) loads everything again.
    index.reset();
    assert!(!index.serving() && index.wants_load());
    index.load(&store).await.unwrap();
    index.refresh(&store).await.unwrap();
    agrees(&index, "newsletter").await;

    // More states than the bound: not loaded, checks read the database.
    let small = StateIndex::new(1_000);
    small.load_pages(&store, 500).await.unwrap();
    small.refresh(&store).await.unwrap();
    assert!(!small.serving() && !small.wants_load());
    assert_eq!(small.lookup(&hash(0), "newsletter", None), None);

    db.close().await;
    if let Some(pg) = pg {
        pg.drop_now().await;
    }
}

custodia_tests::both_backends!(state_index_follows_the_table);
