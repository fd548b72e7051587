//! Following consent changes and erasing a subject: the change stream resumes
//! from a cursor without losing changes, and erasure removes a subject's records
//! and receipts everywhere in consent.

use custodia_proto::consent::v1::{
    CheckReason, ConsentState, EraseSubjectRequest, GetReceiptRequest, WatchConsentChangesRequest,
    WatchConsentChangesResponse,
};
use custodia_tests::{Backend, TestApp, email};

use super::{check, events_of, grant, newsletter, withdraw};

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

    // Erasure removes the subject's records everywhere in consent.
    let erased = c
        .erase_subject(EraseSubjectRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            dsar_request: "requests/7".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.erased_event_count, 2);
    assert_eq!(
        erased.erased_receipt_count, 2,
        "the grant's and the withdrawal's receipts"
    );
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
        (false, CheckReason::NoRecord)
    );
    let trail = events_of(&mut c, "ada@example.edu").await;
    assert!(trail.is_empty());

    app.stop().await;
}
