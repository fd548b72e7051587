//! Concurrent writes: many RecordConsent / WithdrawConsent calls through the API
//! at once, and two replicas writing the same keys in opposite orders.

use std::collections::{BTreeMap, HashMap};

use custodia_consent::{records::NewRecord, store::ConsentStore};
use custodia_core::{ServiceName, storage};
use custodia_proto::consent::v1::{
    ConsentChannel, ConsentEvent, ConsentState, CreatePurposeRequest, Decision, Evidence,
    LawfulBasis, ListSubjectConsentsRequest, Purpose, PurposeCategory, PurposeDecision,
    RecordConsentRequest, WatchConsentChangesRequest, WithdrawConsentRequest,
};
use custodia_tests::{Backend, TestApp, TestStore, check, email, events_of};

use super::{job, record};

custodia_tests::both_backends!(concurrent_writes);

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

/// 64 calls at once over 8 subjects (16 writes sent twice with one request id):
/// a retry replays the first call's events, the change stream carries every
/// event once with gap-free numbers, and each subject's state is its last event.
async fn concurrent_writes(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;
    c.create_purpose(CreatePurposeRequest {
        purpose_id: "enrolment".into(),
        purpose: Some(Purpose {
            display_name: "enrolment".into(),
            lawful_basis: LawfulBasis::Contract as i32,
            category: PurposeCategory::Communication as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();

    let now = app.timestamp().seconds;

    // 64 calls at once: 16 writes sent twice, 32 sent once; 8 subjects.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let w = if i < 32 { i / 2 } else { i - 16 };
            let mut c = c.clone();
            let request = write(w, &notice, now);
            tokio::spawn(async move {
                let events = match request {
                    Write::Grant(r) => c.record_consent(r).await?.into_inner().events,
                    Write::Withdraw(r) => c.withdraw_consent(r).await?.into_inner().events,
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
    let replayed = c.record_consent(retry).await.unwrap().into_inner().events;
    assert_eq!(
        replayed.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        by_write[&0]
    );

    // The change stream from the start: every event once, seqs 1..=total.
    let mut stream = c
        .watch_consent_changes(WatchConsentChangesRequest {
            start_time: Some(prost_types::Timestamp::default()),
            ..Default::default()
        })
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
        let who = format!("s{s}@example.edu");
        let subject = email(&who);
        let trail = events_of(&mut c, &who).await;
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
            .list_subject_consents(ListSubjectConsentsRequest {
                subject_identifiers: vec![subject.clone()],
                ..Default::default()
            })
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
        let (allowed, _) = check(&mut c, &who, "newsletter").await;
        assert_eq!(
            allowed,
            last["purposes/newsletter"].state == ConsentState::Granted as i32
        );
    }
    app.stop().await;
}

/// Two replicas writing the same (subject, purpose) keys at the same moment, each
/// in the opposite order, both succeed: their writes lock the keys in one order.
/// (Without it, both wait for a key a third transaction holds, each already holding
/// keys the other needs next: when it lets go, PostgreSQL finds a deadlock and
/// fails one of them.)
#[tokio::test]
async fn replicas_writing_the_same_keys_in_opposite_orders_both_succeed_postgres() {
    let fixture = TestStore::open(Backend::Postgres, ServiceName::Consent).await;
    let open = || async {
        let db = storage::open_service(&fixture.config, ServiceName::Consent)
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
    fixture.close().await;
}
