//! Following consent changes: the change stream resumes from a cursor without
//! losing changes; erasure removes a subject's records and receipts everywhere
//! in consent; and a second replica on the same database, whose checks answer
//! from memory, learns of writes made elsewhere: it tails the change log every
//! 100 ms (`cache::FOLLOW_POLL`) and drops what it holds of the changed
//! subjects, and an erasure anywhere clears its cache.

use custodia_proto::consent::v1::{
    CheckReason, ConsentState, Decision, EraseSubjectRequest, GetReceiptRequest,
    WatchConsentChangesRequest, WatchConsentChangesResponse,
};
use custodia_tests::{Backend, TestApp, email, eventually};

use super::{check, decide, events_of, grant, newsletter, withdraw};

custodia_tests::both_backends!(watch_and_erase);

/// The next message of a WatchConsentChanges stream (15 s at most).
async fn next_change(
    stream: &mut tonic::Streaming<WatchConsentChangesResponse>,
) -> WatchConsentChangesResponse {
    tokio::time::timeout(std::time::Duration::from_secs(15), stream.message())
        .await
        .expect("a change within 15 s")
        .unwrap()
        .expect("stream open")
}

/// A follower of the change stream sees each change; resuming from a cursor
/// misses none made while it was away, and a bad cursor is named. Erasure then
/// removes the subject's events and receipts, and nobody else's.
async fn watch_and_erase(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;

    // A newsletter sender follows changes from now on.
    let mut stream = c
        .watch_consent_changes(WatchConsentChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let granted = c
        .record_consent(grant(&app, "ada@example.edu", &v1))
        .await
        .unwrap()
        .into_inner();
    let first = next_change(&mut stream).await;
    assert_eq!(first.consent.unwrap().state, ConsentState::Granted as i32);
    let withdrawn = c
        .withdraw_consent(withdraw(&app, "ada@example.edu", "newsletter"))
        .await
        .unwrap()
        .into_inner();
    let ada_receipts = [granted.receipt, withdrawn.receipt].map(|r| r.unwrap().name);
    let second = next_change(&mut stream).await;
    assert_eq!(
        second.consent.unwrap().state,
        ConsentState::Withdrawn as i32
    );
    drop(stream);

    // While it is disconnected, more changes happen; resuming misses none of them.
    let mut others = Vec::new();
    for who in ["bob@example.edu", "cleo@example.edu"] {
        let r = c
            .record_consent(grant(&app, who, &v1))
            .await
            .unwrap()
            .into_inner();
        others.push(r.receipt.unwrap().name);
    }
    let mut resumed = c
        .watch_consent_changes(WatchConsentChangesRequest {
            cursor: second.cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let a = next_change(&mut resumed).await;
    let b = next_change(&mut resumed).await;
    assert_eq!(a.event.unwrap().state, ConsentState::Granted as i32);
    assert_ne!(a.cursor, b.cursor);
    let bad = c
        .watch_consent_changes(WatchConsentChangesRequest {
            cursor: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("cursor"), "{}", bad.message());

    // Erasure removes the subject's records everywhere in consent, but for the
    // withdrawal, kept minimised (suppression, Art. 17(3)(e)).
    let erased = c
        .erase_subject(EraseSubjectRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            dsar_request: "requests/7".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.erased_event_count, 1, "the grant");
    assert_eq!(
        erased.erased_receipt_count, 2,
        "the grant's and the withdrawal's receipts"
    );
    assert_eq!(erased.retained.len(), 1, "{:?}", erased.retained);
    assert_eq!(erased.retained[0].category, "consent_withdrawals");
    let receipt = |name: &String| {
        let mut c = c.clone();
        let request = GetReceiptRequest { name: name.clone() };
        async move { c.get_receipt(request).await }
    };
    for name in &ada_receipts {
        let gone = receipt(name).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{name}: {gone:?}");
    }
    for name in &others {
        receipt(name).await.expect("other subjects' receipts stay");
    }
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    let trail = events_of(&mut c, "ada@example.edu").await;
    assert_eq!(trail.len(), 1, "only the withdrawal stays");
    assert_eq!(trail[0].state, ConsentState::Withdrawn as i32);

    app.stop().await;
}

/// Measured here: a withdrawal on one replica is seen by the other within 1 s
/// (the obligation), with no write on the other replica itself; an erasure
/// (which deletes the trail) is seen from the erasure epoch.
#[tokio::test]
async fn a_second_replica_sees_withdrawals_and_erasures_postgres() {
    let app = TestApp::spawn(Backend::Postgres, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    c.record_consent(grant(&app, "bob@example.edu", &v1))
        .await
        .unwrap();

    let shared = app.config.database.url.clone();
    let replica = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |cfg| {
        cfg.database.url = shared;
        cfg.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
    })
    .await;
    let mut r = replica.consent().await;
    // Twice, so the second answer comes from the replica's cache.
    assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
    assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
    c.withdraw_consent(withdraw(&app, "bob@example.edu", "newsletter"))
        .await
        .unwrap();
    let acked = std::time::Instant::now();
    // The writing replica itself answers from the new state at once.
    assert_eq!(
        check(&mut c, "bob@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    eventually(|| {
        let mut r = r.clone();
        async move {
            let got = check(&mut r, "bob@example.edu", "newsletter").await;
            (got == (false, CheckReason::Withdrawn)).then_some(())
        }
    })
    .await;
    let seen_after = acked.elapsed();
    assert!(
        seen_after < std::time::Duration::from_secs(1),
        "the other replica saw the withdrawal after {seen_after:?}"
    );

    // Erasure deletes the trail, so the replica learns of it from the erasure
    // epoch, not from the change log.
    c.record_consent(decide(
        &app,
        "cy@example.edu",
        &["newsletter"],
        Decision::Granted,
        &v1,
        "cy-1",
    ))
    .await
    .unwrap();
    eventually(|| {
        let mut r = r.clone();
        async move {
            check(&mut r, "cy@example.edu", "newsletter")
                .await
                .0
                .then_some(())
        }
    })
    .await;
    c.erase_subject(EraseSubjectRequest {
        subject_identifiers: vec![email("cy@example.edu")],
        dsar_request: "requests/r-cy".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually(|| {
        let mut r = r.clone();
        async move {
            let got = check(&mut r, "cy@example.edu", "newsletter").await;
            (got == (false, CheckReason::NoRecord)).then_some(())
        }
    })
    .await;
    replica.stop().await;
    app.stop().await;
}
